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

#[test]
fn cluster_role_grants_list_and_watch_on_exactly_what_is_watched() {
    let d = docs("base/rbac.yaml");
    let role: ClusterRole =
        serde_json::from_value(of_kind(&d, "ClusterRole")).expect("a ClusterRole");
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
    let watched: BTreeSet<(String, String)> = discovery::kubernetes::WATCHED_RESOURCES
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    assert_eq!(granted, watched);

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
