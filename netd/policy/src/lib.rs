//! `netd-policy`: network policy on the node (issue 11).
//!
//! So far the reference semantics: [`eval`] decides what NetworkPolicy, AdminNetworkPolicy
//! and BaselineAdminNetworkPolicy say about one connection, from a discovery snapshot read
//! with [`discovery::Fields::POLICY`]. The nftables planner, the daemon and their traffic
//! tests are still to come; the ruleset will be checked against this evaluator.

pub mod eval;
pub mod plan;
