//! `netd-policy`: network policy on the node (issue 11).
//!
//! - [`eval`]: the reference semantics: what NetworkPolicy, AdminNetworkPolicy and
//!   BaselineAdminNetworkPolicy say about one connection, from a discovery snapshot read with
//!   [`discovery::Fields::POLICY`].
//! - [`plan`]: the same as one nftables table for the pods on one node, checked against
//!   [`eval`] with real traffic.
//! - [`cli`]: the daemon, on [`netd_node`]'s sync loop.

pub mod cli;
pub mod eval;
pub mod plan;
