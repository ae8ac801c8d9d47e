//! Integration tests, compiled as one binary: real gRPC on loopback, the real CLI binary,
//! and crash tests that kill the server process.

mod access;
mod common;

mod cli;
mod crash;
mod custody;
mod demo;
mod docs;
mod epcis;
mod faults;
mod ingest;
mod losses;
mod metrics;
mod offline;
mod permits;
mod pipeline;
mod python;
mod reports;
mod spot;
mod storage;
mod trade;
mod witness;
