//! Everything that touches the OS directly (fork/exec, identities, rlimits, cgroups,
//! /proc, inherited sockets): the only `unsafe` in keel.

pub mod activation;
pub mod cgroup;
pub mod clock;
pub mod limits;
pub mod proc;
pub mod spawn;
pub mod users;
