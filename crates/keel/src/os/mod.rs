//! Everything that touches the OS directly (fork/exec, signals): the only `unsafe` in keel.

pub mod spawn;
