//! `sqlx::migrate!` embeds `migrations/` at compile time; a new migration file changes no
//! Rust source, so tell cargo to rebuild when that folder changes.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
