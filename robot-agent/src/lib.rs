//! The robot agent (not yet built: see issue 5). Nothing here plays audio yet.
