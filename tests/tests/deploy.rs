//! The manifests in deploy/ against the code: the RBAC grants exactly what discovery watches.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

fn docs(rel: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn of_kind(docs: &[Value], kind: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The (API group, resource) pairs a ClusterRole grants; every rule must be list and watch
/// only.
fn granted(role: &ClusterRole) -> BTreeSet<(String, String)> {
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(
            verbs,
            BTreeSet::from(["list", "watch"]),
            "only list and watch: {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                granted.insert((g.clone(), r.clone()));
            }
        }
    }
    granted
}

fn pairs(resources: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    resources
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect()
}

#[test]
fn cluster_role_grants_list_and_watch_on_exactly_what_is_watched() {
    let d = docs("base/rbac.yaml");
    let role: ClusterRole =
        serde_json::from_value(of_kind(&d, "ClusterRole")).expect("a ClusterRole");
    assert_eq!(
        granted(&role),
        pairs(&discovery::kubernetes::KubeOptions::default().watched_resources())
    );

    let binding: ClusterRoleBinding =
        serde_json::from_value(of_kind(&d, "ClusterRoleBinding")).expect("a ClusterRoleBinding");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().expect("named")
    );
    let sa = of_kind(&d, "ServiceAccount");
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        (subject.kind.as_str(), Some(subject.name.as_str())),
        ("ServiceAccount", sa["metadata"]["name"].as_str())
    );
    assert_eq!(
        subject.namespace.as_deref(),
        sa["metadata"]["namespace"].as_str()
    );
}

#[test]
fn kustomization_lists_every_manifest_in_base() {
    let k = &docs("base/kustomization.yaml")[0];
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let files: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files.iter().map(String::as_str).collect());
}

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

/// Every document of every manifest in base/, parsed into its typed object.
#[test]
fn every_manifest_parses_into_its_typed_object() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let mut kinds = Vec::new();
    for f in std::fs::read_dir(&dir).expect("dir").flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        for d in docs(&format!("base/{name}")) {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let ok = match kind.as_str() {
                "Deployment" => serde_json::from_value::<Deployment>(d).map(drop),
                "Service" => serde_json::from_value::<Service>(d).map(drop),
                "ServiceAccount" => serde_json::from_value::<ServiceAccount>(d).map(drop),
                "ClusterRole" => serde_json::from_value::<ClusterRole>(d).map(drop),
                "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(d).map(drop),
                "PodDisruptionBudget" => serde_json::from_value::<PodDisruptionBudget>(d).map(drop),
                "ConfigMap" => {
                    serde_json::from_value::<k8s_openapi::api::core::v1::ConfigMap>(d).map(drop)
                }
                other => panic!("{name}: unexpected kind {other}"),
            };
            ok.unwrap_or_else(|e| panic!("{name}: {kind}: {e}"));
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ]
    );
}

fn deployment() -> Deployment {
    serde_json::from_value(of_kind(&docs("base/deployment.yaml"), "Deployment"))
        .expect("Deployment")
}

#[test]
fn deployment_flags_ports_and_probes_match_the_binary() {
    use clap::Parser as _;
    let d = deployment();
    let spec = &d.spec;
    let pod = spec.template.spec.as_ref().expect("pod spec");
    let c = &pod.containers[0];
    let args = c.args.clone().expect("args");

    // The args are what the binary accepts.
    let cli = clusterdns::cli::Cli::try_parse_from(
        std::iter::once("clusterdns".to_string()).chain(args.clone()),
    )
    .unwrap_or_else(|e| panic!("the Deployment's args do not parse: {e}"));
    let clusterdns::cli::Command::Serve(serve) = cli.command;
    let dns_port = serve.listen[0].port() as i32;
    let admin_port = serve.admin_listen.0.expect("admin endpoint on").port() as i32;

    // Ports: DNS over UDP and TCP on the listen port, and the admin port.
    let ports: Vec<(String, i32, String)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.container_port,
                p.protocol.clone().unwrap_or("TCP".into()),
            )
        })
        .collect();
    assert!(
        ports.contains(&("dns".into(), dns_port, "UDP".into())),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("dns-tcp".into(), dns_port, "TCP".into())),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("metrics".into(), admin_port, "TCP".into())),
        "{ports:?}"
    );

    // Probes hit the admin endpoint's paths.
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        (g.path.unwrap_or_default(), g.port)
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe(&c.liveness_probe),
        ("/health".into(), IntOrString::String("metrics".into()))
    );
    assert_eq!(
        probe(&c.readiness_probe),
        ("/ready".into(), IntOrString::String("metrics".into()))
    );

    // Lameduck fits in the grace period, with the TCP drain.
    let grace = pod.termination_grace_period_seconds.expect("grace period");
    assert!(
        serve.lameduck.as_secs() as i64 + 5 < grace,
        "lameduck {:?} vs grace {grace}",
        serve.lameduck
    );

    // Non-root, read-only, only NET_BIND_SERVICE; critical priority; spread; two or more.
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_string()][..])
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    assert!(
        pod.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some(),
        "anti-affinity"
    );
    assert!(spec.replicas.unwrap_or(1) >= 2);
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("Default"),
        "the DNS server must not resolve through itself"
    );

    // The service account is the one the RBAC binds.
    let sa = of_kind(&docs("base/rbac.yaml"), "ServiceAccount");
    assert_eq!(
        pod.service_account_name.as_deref(),
        sa["metadata"]["name"].as_str()
    );
}

#[test]
fn service_and_pdb_select_the_pods_and_target_their_ports() {
    let d = deployment();
    let labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    let container_ports: Vec<String> = d.spec.template.spec.as_ref().expect("pod").containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();

    let svc: Service =
        serde_json::from_value(of_kind(&docs("base/service.yaml"), "Service")).expect("Service");
    assert_eq!(
        (
            svc.metadata.name.as_deref(),
            svc.metadata.namespace.as_deref()
        ),
        (Some("kube-dns"), Some("kube-system"))
    );
    let spec = svc.spec.expect("spec");
    for (k, v) in spec.selector.expect("selector") {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "the Service selects the pods ({k})"
        );
    }
    let mut seen = BTreeSet::new();
    for p in spec.ports.expect("ports") {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let Some(IntOrString::String(target)) = p.target_port else {
            panic!("{:?}: target a named port", p.name)
        };
        assert!(
            container_ports.contains(&target),
            "{target} is not a container port"
        );
        seen.insert((p.port, p.protocol.unwrap_or_default()));
    }
    assert!(
        seen.contains(&(53, "UDP".into()))
            && seen.contains(&(53, "TCP".into()))
            && seen.contains(&(9153, "TCP".into())),
        "{seen:?}"
    );

    let pdb: PodDisruptionBudget =
        serde_json::from_value(of_kind(&docs("base/pdb.yaml"), "PodDisruptionBudget"))
            .expect("PDB");
    for (k, v) in pdb
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.match_labels)
        .expect("matchLabels")
    {
        assert_eq!(labels.get(&k), Some(&v), "the PDB selects the pods ({k})");
    }
}

#[test]
fn the_configmap_holds_a_valid_config_mounted_where_the_flag_points() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let cm: ConfigMap = serde_json::from_value(of_kind(&docs("base/configmap.yaml"), "ConfigMap"))
        .expect("ConfigMap");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("config.yaml key");
    // Parsed and validated by the server's own code (resolving reads this machine's
    // /etc/resolv.conf, as the pod would read the node's; nothing is sent).
    let file = clusterdns::config::FileConfig::parse(Path::new("config.yaml"), text)
        .expect("the config parses");
    file.resolve(&[]).expect("the config validates");

    use clap::Parser as _;
    let d = deployment();
    let pod = d.spec.template.spec.as_ref().expect("pod");
    let args = pod.containers[0].args.clone().expect("args");
    let cli =
        clusterdns::cli::Cli::try_parse_from(std::iter::once("clusterdns".to_string()).chain(args))
            .expect("args parse");
    let clusterdns::cli::Command::Serve(serve) = cli.command;
    let config = serve.config.expect("--config is passed");
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| config.starts_with(&m.mount_path))
        .expect("the config path is on a mounted volume");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the volume");
    let source = volume.config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(Some(source.name.as_str()), cm.metadata.name.as_deref());
    let file_name = config
        .strip_prefix(&mount.mount_path)
        .expect("under the mount");
    assert!(
        source
            .items
            .iter()
            .flatten()
            .any(|i| Path::new(&i.path) == file_name && i.key == "config.yaml")
    );
}

/// What every node daemon's manifests in `deploy/DIR` must say: RBAC for exactly `watched`,
/// a DaemonSet on the host network under that service account, with the node name from the
/// downward API, and a kustomization listing both files. Returns the pod spec and the
/// container's command line (with the node name the downward API provides).
fn node_daemon(
    dir: &str,
    binary: &str,
    watched: &[(&str, &str)],
) -> (k8s_openapi::api::core::v1::PodSpec, Vec<String>) {
    use k8s_openapi::api::apps::v1::DaemonSet;

    let d = docs(&format!("{dir}/rbac.yaml"));
    let role: ClusterRole =
        serde_json::from_value(of_kind(&d, "ClusterRole")).expect("a ClusterRole");
    assert_eq!(
        granted(&role),
        pairs(watched),
        "{dir}: exactly what the daemon watches"
    );
    let ds: DaemonSet = serde_json::from_value(of_kind(
        &docs(&format!("{dir}/daemonset.yaml")),
        "DaemonSet",
    ))
    .expect("a DaemonSet");
    let pod = ds.spec.template.spec.clone().expect("pod spec");
    let c = &pod.containers[0];
    let mut argv = vec![binary.to_string()];
    argv.extend(c.args.clone().expect("args"));
    argv.extend(["--node-name".to_string(), "node-a".to_string()]);
    assert!(
        c.env.iter().flatten().any(|e| e.name == "NODE_NAME"),
        "{dir}: the node name comes from the downward API"
    );
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.service_account_name.as_deref(),
        of_kind(&d, "ServiceAccount")["metadata"]["name"].as_str()
    );
    let k = &docs(&format!("{dir}/kustomization.yaml"))[0];
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listed, BTreeSet::from(["rbac.yaml", "daemonset.yaml"]));
    (pod, argv)
}

#[test]
fn netd_proxy_rbac_and_daemonset_match_the_binary() {
    use clap::Parser as _;

    let (pod, argv) = node_daemon(
        "netd-proxy",
        "netd-proxy",
        &netd_proxy::cli::kube_options().watched_resources(),
    );
    let c = &pod.containers[0];
    let args = netd_proxy::cli::Args::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the DaemonSet's args do not parse: {e}"));
    assert!(!args.cluster_cidrs.is_empty());
    assert!(
        c.env
            .iter()
            .flatten()
            .any(|e| e.name == "NETD_PROXY_NODE_IPS"),
        "the node addresses come from the downward API"
    );
    // The liveness probe hits the proxy's health endpoint.
    let healthz = args.healthz_listen.0.expect("healthz on").port() as i32;
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("healthz"))
        .expect("healthz port");
    assert_eq!(port.container_port, healthz);
    let probe = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("httpGet liveness probe");
    assert_eq!(probe.path.as_deref(), Some("/livez"));
}

#[test]
fn netd_policy_rbac_and_daemonset_match_the_binary() {
    use clap::Parser as _;

    let (_, argv) = node_daemon(
        "netd-policy",
        "netd-policy",
        &netd_policy::cli::kube_options().watched_resources(),
    );
    netd_policy::cli::Args::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the DaemonSet's args do not parse: {e}"));
}
