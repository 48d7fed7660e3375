//! Editing the manifests directory while the server runs: adding, changing, breaking, fixing and
//! removing files shows in answers, and broken files never take good answers away.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use integration::{build_query, eventually, start_server, udp_exchange};

fn a_records(addr: SocketAddr, name: &str) -> (u8, Vec<String>) {
    let q = build_query(1, name, "A", Some(1232), false, true);
    let r = udp_exchange(addr, &q).expect("reply");
    let m = hickory_proto::op::Message::from_vec(&r).expect("parses");
    let ips = m.answers.iter().map(|r| r.data.to_string()).collect();
    (r[3] & 0x0F, ips)
}

fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: live}}\nspec: {{clusterIP: {ip}}}\n---\n"
    )
}

async fn wait_for(addr: SocketAddr, name: &str, want: (u8, &[&str])) {
    let name = name.to_string();
    let ok = eventually(Duration::from_secs(10), || {
        let (rcode, ips) = a_records(addr, &name);
        rcode == want.0 && ips == want.1
    })
    .await;
    let got = a_records(addr, &name);
    assert!(ok, "{name}: got {got:?}, want {want:?}");
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and ConfigMap updates do: the reader never sees half a file.
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_show_in_answers_and_bad_files_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: live}\n";
    std::fs::write(dir.path().join("ns.yaml"), ns).expect("write");
    let srv = start_server(dir.path(), |_| {}).await;
    let addr = srv.server.local_addrs()[0];
    const NX: u8 = 3;

    // Add a file.
    let f = dir.path().join("sub/apps.yaml");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    write(&f, &(svc("one", "10.96.5.1") + &svc("two", "10.96.5.2")));
    wait_for(addr, "one.live.svc.cluster.local.", (0, &["10.96.5.1"])).await;
    wait_for(addr, "two.live.svc.cluster.local.", (0, &["10.96.5.2"])).await;

    // Change it.
    write(&f, &(svc("one", "10.96.5.11") + &svc("two", "10.96.5.2")));
    wait_for(addr, "one.live.svc.cluster.local.", (0, &["10.96.5.11"])).await;

    // Break one document: the other still changes, the broken one keeps its last good answer.
    write(&f, &(svc("one", "10.96.5.21") + &svc("two", "not-an-ip")));
    wait_for(addr, "one.live.svc.cluster.local.", (0, &["10.96.5.21"])).await;
    assert_eq!(
        a_records(addr, "two.live.svc.cluster.local.").1,
        ["10.96.5.2"]
    );

    // Break the whole file: everything it had stays.
    write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    );
    // A good file added after it proves the broken one was read and rejected.
    write(
        &dir.path().join("marker.json"),
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"marker","namespace":"live"},"spec":{"clusterIP":"10.96.5.99"}}"#,
    );
    wait_for(addr, "marker.live.svc.cluster.local.", (0, &["10.96.5.99"])).await;
    assert_eq!(
        a_records(addr, "one.live.svc.cluster.local.").1,
        ["10.96.5.21"]
    );
    assert_eq!(
        a_records(addr, "two.live.svc.cluster.local.").1,
        ["10.96.5.2"]
    );

    // Fix it, without `two`: taken as written.
    write(&f, &svc("one", "10.96.5.1"));
    wait_for(addr, "two.live.svc.cluster.local.", (NX, &[])).await;
    wait_for(addr, "one.live.svc.cluster.local.", (0, &["10.96.5.1"])).await;

    // Remove it.
    std::fs::remove_file(&f).expect("rm");
    wait_for(addr, "one.live.svc.cluster.local.", (NX, &[])).await;
    // The namespace file is untouched throughout.
    let (rcode, _) = a_records(addr, "live.svc.cluster.local.");
    assert_eq!(rcode, 0, "namespace still exists (NODATA)");

    srv.shutdown().await;
}
