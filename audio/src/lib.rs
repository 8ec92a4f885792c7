//! Prepared audio for the robot (being built: issue 3).
