//! Test support: real `redis-server` processes, started and stopped by the tests themselves.
#![allow(dead_code)] // each test file uses a different part

pub mod redis_server;
pub mod fixture;
