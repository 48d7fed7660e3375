//! The README's promises: its run command serves the example cluster, and each of its `dig`
//! lines gets the answer its comment describes, when run against that cluster.

use std::path::Path;

use integration::{dig, example_cluster, have_tool, start_server};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README")
}

#[test]
fn run_command_points_at_the_example_cluster() {
    let text = readme();
    let cmd = text
        .lines()
        .find(|l| l.starts_with("cargo run --release -p clusterdns -- serve"))
        .expect("README has the run command");
    assert!(cmd.contains("--manifests deploy/examples/cluster"), "{cmd}");
    assert!(example_cluster().join("namespaces.yaml").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dig_line_gets_what_its_comment_says() {
    if !have_tool("dig") {
        return;
    }
    let srv = start_server(&example_cluster(), |_| {}).await;
    let addr = srv.server.local_addrs()[0];
    let lines: Vec<(Vec<String>, String)> = readme()
        .lines()
        .filter_map(|l| l.strip_prefix("dig @127.0.0.1 -p 1053 "))
        .map(|l| {
            let (args, comment) = l.split_once('#').unwrap_or((l, ""));
            (
                args.split_whitespace().map(str::to_string).collect(),
                comment.trim().to_string(),
            )
        })
        .collect();
    assert!(lines.len() >= 10, "README lost its dig examples");
    tokio::task::spawn_blocking(move || {
        for (args, comment) in lines {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // +short hides the status; ask for the full reply.
            let full: Vec<&str> = args.iter().copied().filter(|a| *a != "+short").collect();
            let out = dig(addr, &full);
            let (status, answers) = if comment.contains("NXDOMAIN") {
                ("NXDOMAIN", false)
            } else if comment.contains("NODATA") {
                ("NOERROR", false)
            } else {
                ("NOERROR", true)
            };
            assert!(
                out.contains(&format!("status: {status}")),
                "dig {args:?} ({comment}):\n{out}"
            );
            assert_eq!(
                !out.contains("ANSWER: 0,"),
                answers,
                "dig {args:?} ({comment}):\n{out}"
            );
        }
    })
    .await
    .expect("dig thread");
    srv.shutdown().await;
}
