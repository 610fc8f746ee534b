//! End-to-end tests: the real `dataweaver` binary, real files, real QUIC over loopback,
//! real SIGKILLs. One test binary (helpers in `util`), one module per concern.

mod util;

mod chaos;
mod config;
mod control;
mod delivery;
mod failover;
mod http;
mod limits;
mod mqtt;
mod ops;
mod regression;
mod sources;
mod tls;
mod transform;
mod up;
