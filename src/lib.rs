//! Taizhang (台账): a tamper-evident ledger for precursor chemicals and controlled drugs.
//!
//! Pure core (no I/O): [`model`], [`codec`], [`crypto`], [`merkle`], [`checkpoint`], [`witness`],
//! [`verify`].
//! Then [`store`] (segment log + view store), [`ledger`] (ingest and views), [`api`] (gRPC),
//! and the CLI in `main.rs`. Dependencies point one way, in that order. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod checkpoint;
pub mod client;
pub mod codec;
pub mod crypto;
pub mod epcis;
pub mod ledger;
pub mod merkle;
pub mod model;
pub mod store;
pub mod verify;
pub mod witness;

pub mod pb {
    //! Generated protobuf messages and tonic services (package `taizhang.v1`), with the proto3
    //! JSON mapping (serde) used for record files.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("taizhang.v1");
    include!(concat!(env!("OUT_DIR"), "/taizhang.v1.serde.rs"));

    /// Encoded file descriptor set of `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/taizhang_descriptor.bin"));
}
