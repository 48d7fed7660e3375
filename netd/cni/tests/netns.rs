//! The plugin on a node made of network namespaces, with real traffic; every scenario runs
//! against this plugin and against the reference `bridge` + `host-local` plugins, and where the
//! two differ the test says how (see the README's comparison).

mod support;

use std::net::IpAddr;

use serde_json::{Value, json};
use support::{Answer, Flavor, Listener, Node, Ns, connect};

/// Runs each scenario once per plugin, as `ours::NAME` and `reference::NAME`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod ours {
            $(#[test] fn $name() { if super::support::can_run(&[]) { super::$name(super::Flavor::Ours) } })*
        }
        mod reference {
            $(#[test] fn $name() {
                if super::support::can_run(&super::Flavor::Reference.prerequisites()) {
                    super::$name(super::Flavor::Reference)
                }
            })*
        }
    };
}

both!(
    pods_talk_over_tcp_on_both_families_without_nat,
    traffic_to_the_outside_host_is_masqueraded_to_the_node,
    the_pod_end_gets_mtu_addresses_without_dad_and_routes,
    the_bridge_gets_the_gateways_and_the_port_hairpin_mode,
    a_second_add_of_one_attachment_is_an_error_and_keeps_the_first,
    concurrent_adds_never_share_an_address,
    del_succeeds_when_repeated_and_when_the_namespace_is_gone,
    an_exhausted_pool_fails_add_until_an_address_is_released,
    check_passes_after_add_and_names_what_went_missing,
    older_versions_get_results_in_their_own_shape,
    environment_and_configuration_errors_carry_the_spec_codes,
    version_lists_what_the_plugin_speaks,
    status_and_gc_are_answered_at_1_1_0,
    without_ipam_the_attachment_is_layer_2_only,
    pods_on_other_nodes_see_the_pod_address_with_non_masquerade_cidrs,
);

fn v4(json: &Value) -> IpAddr {
    Answer::addresses(json)
        .into_iter()
        .find(IpAddr::is_ipv4)
        .expect("an IPv4 address")
}

fn v6(json: &Value) -> IpAddr {
    Answer::addresses(json)
        .into_iter()
        .find(IpAddr::is_ipv6)
        .expect("an IPv6 address")
}

fn pods_talk_over_tcp_on_both_families_without_nat(flavor: Flavor) {
    let node = Node::new(flavor);
    let (a, a_result) = node.add_pod("a");
    let (b, b_result) = node.add_pod("b");
    for (server, client) in [
        (v4(&b_result), v4(&a_result)),
        (v6(&b_result), v6(&a_result)),
    ] {
        let listener = Listener::start(&b, server);
        assert_eq!(
            connect(&a, server, listener.port),
            Ok(format!("hello from {server}"))
        );
        assert_eq!(
            listener.peer(),
            client,
            "the server sees the client pod's own address"
        );
    }
}

fn traffic_to_the_outside_host_is_masqueraded_to_the_node(flavor: Flavor) {
    let node = Node::new(flavor);
    let (pod, _) = node.add_pod("a");
    for (outside, node_address) in [
        (support::OUTSIDE_V4, support::NODE_V4),
        (support::OUTSIDE_V6, support::NODE_V6),
    ] {
        let outside: IpAddr = outside.parse().expect("address");
        let listener = Listener::start(&node.outside, outside);
        assert_eq!(
            connect(&pod, outside, listener.port),
            Ok(format!("hello from {outside}"))
        );
        assert_eq!(
            listener.peer().to_string(),
            node_address,
            "masqueraded to the node's address"
        );
    }
}

fn the_pod_end_gets_mtu_addresses_without_dad_and_routes(flavor: Flavor) {
    let mut node = Node::new(flavor);
    // An IPAM route without a gateway goes through the range's gateway.
    node.conf["ipam"]["routes"] = json!([{"dst": "198.51.100.0/24"}]);
    let (pod, result) = node.add_pod("a");
    let extra = pod.sh(&["ip", "route", "show", "198.51.100.0/24"]);
    assert_eq!(extra.trim(), "198.51.100.0/24 via 10.22.0.1 dev eth0");
    let links = pod.ip_json(&["addr", "show", "dev", "eth0"]);
    let link = &links[0];
    assert_eq!(link["mtu"], 1400);
    assert_eq!(link["operstate"], "UP");
    let addresses: Vec<String> = link["addr_info"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| {
            assert!(
                a.get("tentative").is_none(),
                "{a} waits on duplicate address detection"
            );
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect();
    let expected: Vec<String> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| ip["address"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(addresses, expected);
    let defaults = pod.sh(&["ip", "route", "show", "default"]);
    assert_eq!(defaults.trim(), "default via 10.22.0.1 dev eth0");
    let defaults6 = pod.sh(&["ip", "-6", "route", "show", "default"]);
    assert!(
        defaults6.starts_with("default via fd00:22::1 dev eth0"),
        "{defaults6}"
    );
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 3);
    assert_eq!(interfaces[2]["name"], "eth0");
    assert_eq!(interfaces[2]["sandbox"], pod.path());
    assert_eq!(interfaces[2]["mac"], link["address"]);
}

fn the_bridge_gets_the_gateways_and_the_port_hairpin_mode(flavor: Flavor) {
    let node = Node::new(flavor);
    let (_pod, result) = node.add_pod("a");
    let bridge = &node.ns.ip_json(&["-d", "addr", "show", "dev", "cni0"])[0];
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    let addresses: Vec<&str> = bridge["addr_info"]
        .as_array()
        .expect("addr")
        .iter()
        .filter_map(|a| a["local"].as_str())
        .collect();
    assert!(
        addresses.contains(&"10.22.0.1") && addresses.contains(&"fd00:22::1"),
        "{addresses:?}"
    );
    let host_end = result["interfaces"][1]["name"].as_str().expect("host end");
    let port = &node.ns.ip_json(&["-d", "link", "show", "dev", host_end])[0];
    assert_eq!(port["master"], "cni0");
    assert_eq!(port["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(
        node.ns.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
}

fn a_second_add_of_one_attachment_is_an_error_and_keeps_the_first(flavor: Flavor) {
    let node = Node::new(flavor);
    let (pod, first) = node.add_pod("a");
    let again = node.run("ADD", "a", Some(&pod.path()), &node.conf);
    let code = again.code();
    match flavor {
        Flavor::Ours => {
            assert_eq!(code, 103);
            assert_eq!(
                again.json["details"],
                format!("interface eth0 already exists in {}", pod.path())
            );
        }
        // The reference answers with its generic code 999.
        Flavor::Reference => assert_eq!(code, 999, "{}", again.stdout),
    }
    // The first attachment is untouched: same address, still allocated, still reachable.
    assert_eq!(node.records().len(), 2);
    let check = node.run("CHECK", "a", Some(&pod.path()), &node.with_prev(&first));
    assert!(check.success, "{check:?}");
}

fn concurrent_adds_never_share_an_address(flavor: Flavor) {
    let node = Node::new(flavor);
    let pods: Vec<Ns> = (0..16).map(|i| Ns::new(&format!("p{i}"))).collect();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let node = &node;
                scope.spawn(move || {
                    node.run("ADD", &format!("c{i}"), Some(&pod.path()), &node.conf)
                        .ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut addresses: Vec<IpAddr> = results.iter().flat_map(Answer::addresses).collect();
    addresses.sort();
    let before = addresses.len();
    addresses.dedup();
    assert_eq!(before, 32, "two addresses per pod");
    assert_eq!(addresses.len(), before, "an address was handed out twice");
    assert_eq!(node.records().len(), 32);
    // Every pod reaches the first one.
    let server = v4(&results[0]);
    for pod in &pods[1..] {
        let listener = Listener::start(&pods[0], server);
        assert!(connect(pod, server, listener.port).is_ok());
    }
}

fn del_succeeds_when_repeated_and_when_the_namespace_is_gone(flavor: Flavor) {
    let node = Node::new(flavor);
    let (a, _) = node.add_pod("a");
    let (b, b_result) = node.add_pod("b");
    assert_eq!(node.records().len(), 4);
    // A normal DEL, then the same again.
    assert!(node.del_pod("a", Some(&a)).success);
    assert!(!a.sh(&["ip", "link"]).contains("eth0"));
    let again = node.del_pod("a", Some(&a));
    assert!(again.success, "{again:?}");
    assert_eq!(node.records().len(), 2);
    // The runtime removed b's namespace before DEL.
    let path = b.path();
    let host_end = b_result["interfaces"][1]["name"]
        .as_str()
        .expect("host end")
        .to_string();
    b.remove();
    let gone = node.run("DEL", "b", Some(&path), &node.conf);
    assert!(gone.success, "{gone:?}");
    assert!(
        node.records().is_empty(),
        "b's addresses are released: {:?}",
        node.records()
    );
    if flavor == Flavor::Ours {
        // Ours deletes the host end by name; the reference relies on the kernel, which removes
        // it with the namespace, but asynchronously, so it may still be there for a moment.
        assert!(!node.ns.sh(&["ip", "link"]).contains(&host_end));
    }
    // And with no CNI_NETNS at all.
    assert!(node.del_pod("b", None).success);
    // A namespace path the runtime unmounted and left behind as a plain file.
    let (c, _) = node.add_pod("c");
    let stale = node.data.path().join("stale-netns");
    std::fs::write(&stale, "").expect("plain file");
    drop(c);
    let stale_del = node.run("DEL", "c", stale.to_str(), &node.conf);
    match flavor {
        Flavor::Ours => {
            assert!(stale_del.success, "{stale_del:?}");
            assert!(node.records().is_empty(), "{:?}", node.records());
        }
        // The reference fails DEL there and keeps the addresses.
        Flavor::Reference => {
            assert!(!stale_del.success, "{stale_del:?}");
            assert_eq!(node.records().len(), 2);
        }
    }
}

fn an_exhausted_pool_fails_add_until_an_address_is_released(flavor: Flavor) {
    let mut node = Node::new(flavor);
    // .0 network, .1 gateway, .7 broadcast: five pods fit.
    node.conf["ipam"]["ranges"] = json!([[{"subnet": "10.23.0.0/29"}]]);
    let pods: Vec<(Ns, Value)> = (0..5).map(|i| node.add_pod(&format!("p{i}"))).collect();
    let mut given: Vec<String> = pods.iter().map(|(_, r)| v4(r).to_string()).collect();
    given.sort();
    assert_eq!(
        given,
        [
            "10.23.0.2",
            "10.23.0.3",
            "10.23.0.4",
            "10.23.0.5",
            "10.23.0.6"
        ]
    );
    let sixth = Ns::new("p5");
    let full = node.run("ADD", "p5", Some(&sixth.path()), &node.conf);
    match flavor {
        Flavor::Ours => {
            assert_eq!(full.code(), 102);
            assert_eq!(
                full.json["details"],
                "no free address in range set 0 (10.23.0.1-10.23.0.6)"
            );
        }
        Flavor::Reference => assert_eq!(full.code(), 999, "{}", full.stdout),
    }
    match flavor {
        // The failed ADD left nothing behind in the pod.
        Flavor::Ours => assert!(!sixth.sh(&["ip", "link"]).contains("eth0")),
        // The reference leaves the veth pair until the runtime's DEL.
        Flavor::Reference => {
            assert!(sixth.sh(&["ip", "link"]).contains("eth0"));
            assert!(node.del_pod("p5", Some(&sixth)).success);
        }
    }
    assert!(node.del_pod("p2", Some(&pods[2].0)).success);
    let result = node.run("ADD", "p5", Some(&sixth.path()), &node.conf).ok();
    assert_eq!(v4(&result).to_string(), "10.23.0.4");
}

fn check_passes_after_add_and_names_what_went_missing(flavor: Flavor) {
    let node = Node::new(flavor);
    let (pod, result) = node.add_pod("a");
    let conf = node.with_prev(&result);
    let check = || node.run("CHECK", "a", Some(&pod.path()), &conf);
    assert!(check().success, "{:?}", check());
    pod.sh(&["ip", "route", "del", "default"]);
    let no_route = check();
    match flavor {
        Flavor::Ours => {
            assert_eq!(no_route.code(), 101);
            assert_eq!(
                no_route.json["details"],
                format!(
                    "route 0.0.0.0/0 via 10.22.0.1 is missing from {}",
                    pod.path()
                )
            );
        }
        Flavor::Reference => assert!(!no_route.success, "the reference notices the route too"),
    }
    pod.sh(&["ip", "route", "add", "default", "via", "10.22.0.1"]);
    assert!(check().success);
    let address = format!("{}/24", v4(&result));
    pod.sh(&["ip", "addr", "del", &address, "dev", "eth0"]);
    let no_address = check();
    assert!(!no_address.success);
    if flavor == Flavor::Ours {
        assert_eq!(
            no_address.json["details"],
            format!("eth0 lacks its address {address}")
        );
    }
    // Removing the address took the default route through its subnet with it.
    pod.sh(&["ip", "addr", "add", &address, "dev", "eth0"]);
    pod.sh(&["ip", "route", "add", "default", "via", "10.22.0.1"]);
    assert!(check().success, "{:?}", check());
    // The allocation record (host-local's layout for both) disappears.
    std::fs::remove_file(node.data.path().join("pods").join(v4(&result).to_string())).expect("rm");
    let no_record = check();
    match flavor {
        Flavor::Ours => assert!(
            no_record.json["details"]
                .as_str()
                .unwrap_or_default()
                .starts_with("the allocation store holds"),
            "{no_record:?}"
        ),
        // The reference's CHECK does not look at host-local's records.
        Flavor::Reference => assert!(no_record.success, "{no_record:?}"),
    }
}

fn older_versions_get_results_in_their_own_shape(flavor: Flavor) {
    let node = Node::new(flavor);
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .into_iter()
        .enumerate()
    {
        let mut conf = node.conf.clone();
        conf["cniVersion"] = json!(version);
        let pod = Ns::new(&format!("v{i}"));
        let answer = node.run("ADD", &format!("v{i}"), Some(&pod.path()), &conf);
        if flavor == Flavor::Reference && version == "1.1.0" {
            assert_eq!(answer.code(), 1, "the reference stops at 1.0.0");
            continue;
        }
        let result = answer.ok();
        assert_eq!(result["cniVersion"], version);
        let ip_version = &result["ips"][0]["version"];
        if version.starts_with("0.") {
            assert_eq!(ip_version, "4", "{version}: {result}");
        } else {
            assert!(ip_version.is_null(), "{version}: {result}");
        }
        let mtu = &result["interfaces"][2]["mtu"];
        assert_eq!(
            mtu.is_null(),
            version != "1.1.0",
            "{version}: mtu is a 1.1.0 field: {result}"
        );
        assert!(node.del_pod(&format!("v{i}"), Some(&pod)).success);
    }
    // 0.2.0 had another result type.
    let mut conf = node.conf.clone();
    conf["cniVersion"] = json!("0.2.0");
    let pod = Ns::new("old");
    let old = node.run("ADD", "old", Some(&pod.path()), &conf);
    match flavor {
        Flavor::Ours => assert_eq!(old.code(), 1),
        // The reference converts down to the 0.2.0 shape.
        Flavor::Reference => assert!(old.ok()["ip4"].is_object()),
    }
}

fn environment_and_configuration_errors_carry_the_spec_codes(flavor: Flavor) {
    let node = Node::new(flavor);
    let pod = Ns::new("e");
    let path = pod.path();
    let missing = node.run_env(&[("CNI_COMMAND", "ADD")], None, &node.conf);
    assert_eq!(missing.code(), 4);
    if flavor == Flavor::Ours {
        assert_eq!(
            missing.json["details"],
            "CNI_CONTAINERID is not set; CNI_IFNAME is not set; CNI_NETNS is not set"
        );
    }
    let unknown = node.run_env(&[("CNI_COMMAND", "UP")], None, &node.conf);
    match flavor {
        Flavor::Ours => assert_eq!(unknown.code(), 4),
        // The reference checks CNI_CONTAINERID before the command, with code 3.
        Flavor::Reference => assert_eq!(unknown.json["msg"], "missing containerID"),
    }
    let garbage = node.run_env(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
        ],
        Some(&path),
        &json!("not an object"),
    );
    // The reference decodes stdin as a Go struct: a JSON string fails there as a decode error.
    assert_eq!(garbage.code(), 6, "{garbage:?}");
    let mut future = node.conf.clone();
    future["cniVersion"] = json!("2.0.0");
    assert_eq!(node.run("ADD", "x", Some(&path), &future).code(), 1);
    let mut bad_subnet = node.conf.clone();
    bad_subnet["ipam"]["ranges"] = json!([[{"subnet": "10.22.0.1/24"}]]);
    let answer = node.run("ADD", "x", Some(&path), &bad_subnet);
    match flavor {
        Flavor::Ours => {
            assert_eq!(answer.code(), 7);
            assert_eq!(
                answer.json["details"],
                "ipam.ranges[0][0]: subnet 10.22.0.1/24 has host bits set; the network is 10.22.0.0/24"
            );
        }
        Flavor::Reference => assert!(!answer.success),
    }
    // A runtime follows a failed ADD with DEL (the reference leaves its veth pair until then).
    assert!(node.del_pod("x", Some(&pod)).success);
    let mut vlan = node.conf.clone();
    vlan["vlan"] = json!(100);
    let answer = node.run("ADD", "x", Some(&path), &vlan);
    match flavor {
        Flavor::Ours => {
            assert_eq!(answer.code(), 2);
            assert_eq!(
                answer.json["details"],
                "vlan: 100 is not supported by netd-cni"
            );
        }
        // The reference implements VLANs; it tries, and fails here on a bridge made without
        // VLAN filtering.
        Flavor::Reference => assert_ne!(answer.json["code"], 2, "{answer:?}"),
    }
    assert!(node.del_pod("x", Some(&pod)).success);
    let mut old_check = node.conf.clone();
    old_check["cniVersion"] = json!("0.3.1");
    assert_eq!(
        node.run("CHECK", "x", Some(&path), &old_check).code(),
        1,
        "CHECK came in 0.4.0"
    );
    // Code 11: another process holds the allocation store's lock past the configured wait.
    if flavor == Flavor::Ours {
        let mut conf = node.conf.clone();
        conf["ipam"]["lockWaitSeconds"] = json!(0.2);
        let dir = node.data.path().join("pods");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let held = nix::fcntl::Flock::lock(
            std::fs::File::create(dir.join("lock")).expect("open"),
            nix::fcntl::FlockArg::LockExclusive,
        )
        .expect("lock");
        let busy = node.run("ADD", "x", Some(&path), &conf);
        assert_eq!(busy.code(), 11, "{busy:?}");
        drop(held);
        assert!(
            !pod.sh(&["ip", "link"]).contains("eth0"),
            "nothing was made"
        );
        node.run("ADD", "x", Some(&path), &conf).ok();
    }
}

fn version_lists_what_the_plugin_speaks(flavor: Flavor) {
    let node = Node::new(flavor);
    let answer = node
        .run_env(
            &[("CNI_COMMAND", "VERSION")],
            None,
            &json!({"cniVersion": "0.4.0"}),
        )
        .ok();
    // The specification: "cniVersion: the value of cniVersion specified on input". The
    // reference answers with its own newest version instead.
    let echoed = match flavor {
        Flavor::Ours => "0.4.0",
        Flavor::Reference => "1.0.0",
    };
    assert_eq!(answer["cniVersion"], echoed);
    let versions: Vec<&str> = answer["supportedVersions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match flavor {
        Flavor::Ours => assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        Flavor::Reference => assert_eq!(
            versions,
            ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
        ),
    }
}

fn status_and_gc_are_answered_at_1_1_0(flavor: Flavor) {
    let mut node = Node::new(flavor);
    node.conf["ipam"]["ranges"] = json!([[{"subnet": "10.23.0.0/30"}]]);
    let mut conf = node.conf.clone();
    conf["cniVersion"] = json!("1.1.0");
    let status = |conf: &Value| node.run_env(&[("CNI_COMMAND", "STATUS")], None, conf);
    if flavor == Flavor::Reference {
        // Debian's plugins stop at CNI 1.0.0: no STATUS, no GC (and the reference asks for a
        // container ID first, with code 3).
        assert_eq!(status(&conf).code(), 3);
        assert_eq!(
            node.run_env(&[("CNI_COMMAND", "GC")], None, &conf).code(),
            3
        );
        return;
    }
    assert!(status(&conf).success, "{:?}", status(&conf));
    // A /30 has one address to hand out.
    let (a, _) = node.add_pod("a");
    let exhausted = status(&conf);
    assert_eq!(exhausted.code(), 50);
    assert_eq!(
        exhausted.json["details"],
        "no free address in range set 0 (10.23.0.1-10.23.0.2)"
    );
    // GC with "a" still valid keeps it; without, releases it.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    node.run_env(&[("CNI_COMMAND", "GC")], None, &gc).ok();
    assert_eq!(node.records(), ["10.23.0.2"]);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "other", "ifname": "eth0"}]);
    assert!(node.run_env(&[("CNI_COMMAND", "GC")], None, &gc).success);
    assert!(node.records().is_empty());
    assert!(status(&conf).success);
    // GC without the list would release everything: refused.
    assert_eq!(
        node.run_env(&[("CNI_COMMAND", "GC")], None, &conf).code(),
        7
    );
    // STATUS at 1.0.0 is not defined.
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(status(&old).code(), 1);
    drop(a);
}

/// Ours only: an `ipam.type` naming another plugin is run from CNI_PATH with the same input.
#[test]
fn a_delegated_ipam_plugin_allocates_and_releases() {
    if !support::can_run(&Flavor::Reference.prerequisites()) {
        return;
    }
    let mut node = Node::new(Flavor::Ours);
    node.conf["ipam"]["type"] = json!("host-local");
    node.conf["cniVersion"] = json!("1.0.0");
    let (pod, result) = node.add_pod("a");
    assert_eq!(
        node.records(),
        [v4(&result).to_string(), v6(&result).to_string()]
    );
    let check = node.run("CHECK", "a", Some(&pod.path()), &node.with_prev(&result));
    assert!(check.success, "{check:?}");
    assert!(node.del_pod("a", Some(&pod)).success);
    assert!(node.records().is_empty());
    // A delegate that fails has its error passed on, and ADD leaves nothing behind.
    node.conf["ipam"]["ranges"] = json!([[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.1.1"}]]);
    let failed = node.run("ADD", "b", Some(&pod.path()), &node.conf);
    assert!(
        failed.json["details"]
            .as_str()
            .unwrap_or_default()
            .starts_with("host-local ADD:"),
        "{failed:?}"
    );
    assert!(!pod.sh(&["ip", "link"]).contains("eth0"));
    // A delegate whose ADD fails is also sent DEL (SPEC.md section 4): a recording delegate.
    let bin = node.data.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let log = node.data.path().join("delegate.log");
    let script = format!(
        "#!/bin/sh\necho \"$CNI_COMMAND\" >> {}\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"busy\",\"details\":\"try later\"}}'\nexit 1\n",
        log.display()
    );
    let recorder = bin.join("recorder");
    std::fs::write(&recorder, script).expect("write script");
    std::fs::set_permissions(
        &recorder,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    // A delegate that gives an address without a gateway: with isGateway the subnet's first
    // address is the gateway, as the reference plugin does.
    let no_gateway = bin.join("no-gateway");
    std::fs::write(
        &no_gateway,
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.22.0.50/24\"}]}'\n",
    )
    .expect("write script");
    std::fs::set_permissions(
        &no_gateway,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    node.extra_path = Some(bin);
    node.conf["ipam"] = json!({"type": "no-gateway"});
    let result = node.run("ADD", "c", Some(&pod.path()), &node.conf).ok();
    assert_eq!(result["ips"][0]["gateway"], "10.22.0.1", "{result}");
    let defaults = pod.sh(&["ip", "route", "show", "default"]);
    assert_eq!(defaults.trim(), "default via 10.22.0.1 dev eth0");
    assert!(node.del_pod("c", Some(&pod)).success);
    node.conf["ipam"] = json!({"type": "recorder"});
    let busy = node.run("ADD", "b", Some(&pod.path()), &node.conf);
    assert_eq!(
        busy.code(),
        11,
        "the delegate's own code is passed on: {busy:?}"
    );
    assert_eq!(busy.json["details"], "recorder ADD: try later");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "ADD\nDEL\n");
    // A delegate that is not there.
    node.conf["ipam"]["type"] = json!("no-such-ipam");
    let missing = node.run("ADD", "b", Some(&pod.path()), &node.conf);
    assert_eq!(missing.code(), 104);
}

/// Ours only: logs never reach stdout, and go to `logFile` when it is set.
#[test]
fn logs_go_to_the_log_file_and_never_to_stdout() {
    if !support::can_run(&[]) {
        return;
    }
    let mut node = Node::new(Flavor::Ours);
    let log = node.data.path().join("cni.log");
    node.conf["logFile"] = json!(log);
    let (pod, _) = node.add_pod("a");
    let written = std::fs::read_to_string(&log).expect("log file");
    assert!(
        written.contains("ADD network=pods container=a ifname=eth0: ok in"),
        "{written}"
    );
    let again = node.run("ADD", "a", Some(&pod.path()), &node.conf);
    assert!(again.stderr.is_empty(), "stderr: {}", again.stderr);
    serde_json::from_str::<Value>(&again.stdout).expect("stdout holds only the error object");
}

/// Ours only: STATUS says 51 when the bridge is gone under allocated pods, and CHECK notices
/// the masquerade rules going.
#[test]
fn status_and_check_notice_the_node_losing_its_network() {
    if !support::can_run(&[]) {
        return;
    }
    let node = Node::new(Flavor::Ours);
    let (pod, result) = node.add_pod("a");
    let check = node.run("CHECK", "a", Some(&pod.path()), &node.with_prev(&result));
    assert!(check.success, "{check:?}");
    let check = || node.run("CHECK", "a", Some(&pod.path()), &node.with_prev(&result));
    node.ns.sh(&[
        "nft",
        "delete",
        "element",
        "inet",
        "netd-cni",
        "pods_v4",
        "{ 10.22.0.0/24 }",
    ]);
    assert_eq!(check().code(), 101);
    assert_eq!(
        check().json["details"],
        "masquerading of 10.22.0.0/24 is missing from table inet netd-cni"
    );
    node.ns
        .sh(&["nft", "flush", "chain", "inet", "netd-cni", "postrouting"]);
    assert_eq!(
        check().json["details"],
        "the masquerade rules of table inet netd-cni are missing"
    );
    node.ns.sh(&["nft", "delete", "table", "inet", "netd-cni"]);
    assert_eq!(
        check().json["details"],
        "table inet netd-cni, which masquerades the pods, is missing"
    );
    // The next ADD puts the table back.
    let (b, _) = node.add_pod("b");
    assert!(check().success, "{:?}", check());
    let _still_there = b;
    let status = |conf: &Value| node.run_env(&[("CNI_COMMAND", "STATUS")], None, conf);
    assert!(status(&node.conf).success);
    node.ns.sh(&["ip", "link", "del", "cni0"]);
    let lost = status(&node.conf);
    assert_eq!(lost.code(), 51);
    assert_eq!(
        lost.json["details"],
        "bridge cni0 is gone while 4 addresses are allocated"
    );
}

fn without_ipam_the_attachment_is_layer_2_only(flavor: Flavor) {
    let mut node = Node::new(flavor);
    node.conf.as_object_mut().expect("object").remove("ipam");
    node.conf["ipMasq"] = json!(false);
    let (pod, result) = node.add_pod("a");
    assert!(Answer::addresses(&result).is_empty(), "{result}");
    let link = &pod.ip_json(&["addr", "show", "dev", "eth0"])[0];
    assert_eq!(link["operstate"], "UP");
    assert!(
        link["addr_info"]
            .as_array()
            .expect("addresses")
            .iter()
            .all(|a| a["scope"] != "global")
    );
    assert!(node.del_pod("a", Some(&pod)).success);
}

/// Ours only: the example configuration in deploy/cni/ works as a runtime would use it (the
/// runtime passes each plugin its entry with the list's `cniVersion` and `name`).
#[test]
fn the_example_conflist_attaches_a_pod() {
    if !support::can_run(&[]) {
        return;
    }
    let text = include_str!("../../../deploy/cni/10-pods.conflist");
    let list: Value = serde_json::from_str(text).expect("the example is JSON");
    let mut node = Node::new(Flavor::Ours);
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["ipam"]["dataDir"] = json!(node.data.path());
    node.conf = conf;
    let (pod, result) = node.add_pod("a");
    assert_eq!(Answer::addresses(&result).len(), 2, "{result}");
    let check = node.run("CHECK", "a", Some(&pod.path()), &node.with_prev(&result));
    assert!(check.success, "{check:?}");
    let outside: IpAddr = support::OUTSIDE_V4.parse().expect("address");
    let listener = Listener::start(&node.outside, outside);
    assert!(connect(&pod, outside, listener.port).is_ok());
    assert_eq!(listener.peer().to_string(), support::NODE_V4);
}

fn pods_on_other_nodes_see_the_pod_address_with_non_masquerade_cidrs(flavor: Flavor) {
    let mut node = Node::new(flavor);
    // The outside host plays another node whose pods are 10.22.1.0/24 (in the cluster's
    // 10.22.0.0/16); the two nodes route each other's pod subnets.
    node.conf["nonMasqueradeCIDRs"] = json!(["10.22.0.0/16"]);
    node.outside
        .sh(&["ip", "addr", "add", "10.22.1.2/32", "dev", "lo"]);
    node.outside.sh(&[
        "ip",
        "route",
        "add",
        "10.22.0.0/24",
        "via",
        support::NODE_V4,
    ]);
    node.ns.sh(&[
        "ip",
        "route",
        "add",
        "10.22.1.0/24",
        "via",
        support::OUTSIDE_V4,
    ]);
    let (pod, result) = node.add_pod("a");
    let other_pod: IpAddr = "10.22.1.2".parse().expect("address");
    let listener = Listener::start(&node.outside, other_pod);
    assert!(connect(&pod, other_pod, listener.port).is_ok());
    let seen = listener.peer();
    match flavor {
        Flavor::Ours => assert_eq!(seen, v4(&result), "no NAT between pods of different nodes"),
        // The reference has no such option: it masquerades everything outside the node's subnet.
        Flavor::Reference => assert_eq!(seen.to_string(), support::NODE_V4),
    }
    // A second pod takes the quick path (elements only) into the table the first one made.
    let (b, b_result) = node.add_pod("b");
    let listener = Listener::start(&node.outside, other_pod);
    assert!(connect(&b, other_pod, listener.port).is_ok());
    if flavor == Flavor::Ours {
        assert_eq!(listener.peer(), v4(&b_result));
        let check = node.run("CHECK", "b", Some(&b.path()), &node.with_prev(&b_result));
        assert!(check.success, "{check:?}");
    }
    // Anything else outside is still masqueraded.
    let outside: IpAddr = support::OUTSIDE_V4.parse().expect("address");
    let listener = Listener::start(&node.outside, outside);
    assert!(connect(&pod, outside, listener.port).is_ok());
    assert_eq!(listener.peer().to_string(), support::NODE_V4);
}
