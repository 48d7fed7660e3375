//! Kubernetes objects in, one immutable [`ClusterSnapshot`] out.
//!
//! ```text
//!  manifests dir ──inotify──┐
//!                           ├─> strip to model types ─> ObjectStore ─> Publisher ─watch─> consumers
//!  Kubernetes API ──watch───┘   (model.rs, k8s-openapi   (snapshot.rs: indexes,
//!  (kubernetes.rs)              types stop here)          generation, synced)
//! ```
//!
//! Every source converts k8s-openapi objects into the stripped types of [`model`] at ingestion,
//! so consumers never see k8s-openapi types and both sources share one set of conversion rules.
//! Consumers receive `Arc<ClusterSnapshot>` values through a `tokio::sync::watch` channel and
//! derive their own views from them off their hot paths.

pub mod kubernetes;
pub mod manifests;
pub mod model;
pub mod snapshot;

pub use model::{Object, ObjectKey};
pub use snapshot::{ClusterSnapshot, ObjectStore, Publisher};
