//! Test support: real `redis-server` processes, started and stopped by the tests themselves.
#![allow(dead_code)] // each test file uses a different part

pub mod checker;
pub mod cluster;
pub mod fixture;
pub mod logs;
pub mod node;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod records;
pub mod redis_server;
pub mod sentinel;
pub mod worker;
