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
pub mod policy;
pub mod snapshot;

pub use model::{Fields, Object, ObjectKey};
pub use snapshot::{ClusterSnapshot, ObjectStore, Publisher};

use std::path::PathBuf;
use std::sync::Arc;

/// Where the cluster comes from: what `--manifests` and `--kubeconfig` choose in every binary.
#[derive(Debug, Clone)]
pub enum Source {
    /// A watched directory of manifests.
    Manifests {
        dir: PathBuf,
        watch: manifests::WatchOptions,
    },
    /// The Kubernetes API, from a kubeconfig file or (`None`) the pod's service account.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        options: kubernetes::KubeOptions,
    },
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Manifests(#[from] manifests::SourceError),
    #[error(transparent)]
    Client(#[from] kubernetes::ClientError),
}

impl Source {
    /// The source that `--manifests DIR` and `--kubeconfig PATH` choose: the directory when
    /// given, else the API through the kubeconfig, else the pod's service account when running
    /// in a cluster (`KUBERNETES_SERVICE_HOST` is set). `None` when there is no source at all.
    pub fn from_flags(
        manifests: Option<PathBuf>,
        kubeconfig: Option<PathBuf>,
        options: kubernetes::KubeOptions,
    ) -> Option<Source> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        match (manifests, kubeconfig) {
            (Some(dir), _) => Some(Source::Manifests {
                dir,
                watch: manifests::WatchOptions {
                    fields: options.fields,
                    ..Default::default()
                },
            }),
            (None, kubeconfig) if kubeconfig.is_some() || in_cluster => Some(Source::Kubernetes {
                kubeconfig,
                options,
            }),
            (None, _) => None,
        }
    }

    /// Keeps `fields` as well as what DNS reads.
    pub fn with_fields(mut self, fields: Fields) -> Self {
        match &mut self {
            Source::Manifests { watch, .. } => watch.fields = fields,
            Source::Kubernetes { options, .. } => options.fields = fields,
        }
        self
    }

    /// Starts the source and returns its snapshot channel. Must be called inside a tokio
    /// runtime.
    pub async fn start(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<Arc<ClusterSnapshot>>, StartError> {
        Ok(match self {
            Source::Manifests { dir, watch } => manifests::watch_dir(dir, watch.clone())?,
            Source::Kubernetes {
                kubeconfig,
                options,
            } => {
                let client = kubernetes::client(kubeconfig.as_deref()).await?;
                kubernetes::watch_api(client, options.clone())
            }
        })
    }
}
