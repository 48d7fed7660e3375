//! The evaluator against a table of cases: one small cluster, a set of policies per case, and
//! the verdict each connection must get. The cluster, as manifests:
//!
//! ```text
//!  namespace a (team: red)     b (team: blue)     c (team: green)
//!  pod x  app: web  10.0.N.1   ports http 80/TCP, dns 53/UDP
//!  pod y  app: db   10.0.N.2   ports pg 5432/TCP
//!  pod z  app: client 10.0.N.3
//!  (N = 1, 2, 3 for a, b, c)   nodes: node-1 192.0.2.1 (role: worker), node-2 192.0.2.2 (role: control)
//!  a host-network pod a/h on 192.0.2.1; an outside address 198.51.100.9
//! ```
//!
//! Each case names the semantics it pins down. A connection is `src -> dst proto/port`, where an
//! end is `ns/pod` or an address.

mod support;

use discovery::model::Protocol;
use netd_policy::eval::{Verdict, World};
use support::{address, expand, flow, snapshot};

use Verdict::{Allow, Deny};

struct Case {
    name: &'static str,
    policies: &'static str,
    flows: &'static [(&'static str, Verdict)],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no policy: everything is allowed",
            policies: "",
            flows: &[
                ("a/z -> b/x tcp/80", Allow),
                ("198.51.100.9 -> c/y tcp/5432", Allow),
                ("a/x -> 198.51.100.9 udp/53", Allow),
            ],
        },
        Case {
            name: "default-deny ingress isolates ingress only",
            policies: "NP metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}",
            flows: &[
                ("b/z -> a/x tcp/80", Deny),
                ("a/z -> a/x tcp/80", Deny),
                ("198.51.100.9 -> a/x tcp/80", Deny),
                ("a/x -> b/x tcp/80", Allow),
                ("b/z -> b/x tcp/80", Allow),
            ],
        },
        Case {
            name: "policyTypes default: egress rules isolate egress, ingress always",
            policies: "NP metadata: {name: out, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  egress: [{to: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
            flows: &[
                ("a/z -> b/x tcp/80", Allow),
                ("a/z -> c/x tcp/80", Deny),
                ("a/z -> 198.51.100.9 tcp/443", Deny),
                ("b/z -> a/z tcp/80", Deny),
                ("a/x -> c/x tcp/80", Allow),
            ],
        },
        Case {
            name: "podSelector peer: same namespace only",
            policies: "NP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]",
            flows: &[
                ("a/z -> a/x tcp/80", Allow),
                ("b/z -> a/x tcp/80", Deny),
                ("a/y -> a/x tcp/80", Deny),
                ("b/z -> a/y tcp/5432", Allow),
            ],
        },
        Case {
            name: "namespaceSelector peer: every pod of the namespaces",
            policies: "NP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
            flows: &[
                ("b/z -> a/x tcp/80", Allow),
                ("b/x -> a/y tcp/5432", Allow),
                ("c/z -> a/x tcp/80", Deny),
                ("a/z -> a/x tcp/80", Deny),
            ],
        },
        Case {
            name: "namespaceSelector and podSelector in one peer: both must match",
            policies: "NP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: client}}}]",
            flows: &[
                ("b/z -> a/x tcp/80", Allow),
                ("b/x -> a/x tcp/80", Deny),
                ("a/z -> a/x tcp/80", Deny),
            ],
        },
        Case {
            name: "namespaceSelector and podSelector as two peers: either matches",
            policies: "NP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: blue}}}, {podSelector: {matchLabels: {app: client}}}]",
            flows: &[
                ("b/x -> a/x tcp/80", Allow),
                ("a/z -> a/x tcp/80", Allow),
                ("c/z -> a/x tcp/80", Deny),
            ],
        },
        Case {
            name: "ipBlock with except, matching pod addresses too",
            policies: "NP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]}]",
            flows: &[
                ("a/z -> a/x tcp/80", Allow),
                ("c/z -> a/x tcp/80", Allow),
                ("b/z -> a/x tcp/80", Deny),
                ("198.51.100.9 -> a/x tcp/80", Deny),
            ],
        },
        Case {
            name: "ports: number, range, name with its protocol; protocols kept apart",
            policies: "NP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 5432}, {port: 8000, endPort: 8080}, {port: dns, protocol: UDP}, {port: http}]",
            flows: &[
                ("b/z -> a/y tcp/5432", Allow),
                ("b/z -> a/y udp/5432", Deny),
                ("b/z -> a/x tcp/8080", Allow),
                ("b/z -> a/x tcp/8081", Deny),
                ("b/z -> a/x udp/53", Allow),
                ("b/z -> a/x tcp/53", Deny),
                ("b/z -> a/x tcp/80", Allow),
                ("b/z -> a/y tcp/80", Deny),
                ("b/z -> a/x sctp/80", Deny),
            ],
        },
        Case {
            name: "named port on egress resolves against the destination pod",
            policies: "NP metadata: {name: out, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: http}]}]",
            flows: &[
                ("a/z -> b/x tcp/80", Allow),
                ("a/z -> b/y tcp/80", Deny),
                ("a/z -> 198.51.100.9 tcp/80", Deny),
            ],
        },
        Case {
            name: "named port on egress to an ipBlock resolves against the pods in it",
            policies: "NP metadata: {name: out, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.1/16}}], ports: [{port: http}]}]",
            flows: &[
                ("a/z -> b/x tcp/80", Allow),
                ("a/z -> b/y tcp/80", Deny),
                ("a/z -> 198.51.100.9 tcp/80", Deny),
            ],
        },
        Case {
            name: "a policy name longer than nft names allows",
            policies: "NP metadata: {name: deny-everything-into-namespace-a-because-the-team-said-so-and-this-name-is-long-on-purpose-to-be-longer-than-any-nft-name-may-be-which-is-two-hundred-and-fifty-five-bytes-so-it-goes-on-and-on-and-on-and-on-and-on-a, namespace: a}\nspec: {podSelector: {}}",
            flows: &[("b/z -> a/x tcp/80", Deny), ("a/z -> b/x tcp/80", Allow)],
        },
        Case {
            name: "a finished pod's address belongs to the pod that has it now",
            policies: "apiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: c, labels: {app: web}}\nspec: {nodeName: node-1, containers: [{name: c}]}\nstatus: {phase: Succeeded, podIP: 10.0.2.1}\n---\nNP metadata: {name: deny, namespace: c}\nspec: {podSelector: {}}",
            flows: &[("a/z -> b/x tcp/80", Allow), ("a/z -> c/x tcp/80", Deny)],
        },
        Case {
            name: "policies are additive",
            policies: "NP metadata: {name: one, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n---\nNP metadata: {name: two, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: green}}}]}]",
            flows: &[
                ("b/z -> a/x tcp/80", Allow),
                ("c/z -> a/x tcp/80", Allow),
                ("c/z -> a/y tcp/5432", Deny),
            ],
        },
        Case {
            name: "a connection needs the source's egress and the destination's ingress",
            policies: "NP metadata: {name: out, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n---\nNP metadata: {name: in, namespace: b}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}}]}]",
            flows: &[
                ("a/z -> b/x tcp/80", Allow),
                ("a/z -> c/x tcp/80", Deny),
                ("c/z -> b/x tcp/80", Deny),
                ("c/z -> a/x tcp/80", Allow),
            ],
        },
        Case {
            name: "an AdminNetworkPolicy Deny beats a NetworkPolicy allow",
            policies: "ANP metadata: {name: guard}\nspec:\n  priority: 10\n  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: blue}}}]}]\n---\nNP metadata: {name: all, namespace: a}\nspec: {podSelector: {}, ingress: [{}]}",
            flows: &[("b/z -> a/x tcp/80", Deny), ("c/z -> a/x tcp/80", Allow)],
        },
        Case {
            name: "an AdminNetworkPolicy Allow beats a NetworkPolicy deny",
            policies: "ANP metadata: {name: monitoring}\nspec:\n  priority: 10\n  subject: {namespaces: {}}\n  ingress: [{action: Allow, from: [{namespaces: {matchLabels: {team: green}}}]}]\n---\nNP metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}",
            flows: &[("c/z -> a/x tcp/80", Allow), ("b/z -> a/x tcp/80", Deny)],
        },
        Case {
            name: "admin policies in priority order, lowest number first",
            policies: "ANP metadata: {name: allow}\nspec:\n  priority: 10\n  subject: {namespaces: {}}\n  ingress: [{action: Allow, from: [{namespaces: {matchLabels: {team: blue}}}]}]\n---\nANP metadata: {name: deny}\nspec:\n  priority: 20\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]",
            flows: &[("b/z -> a/x tcp/80", Allow), ("c/z -> a/x tcp/80", Deny)],
        },
        Case {
            name: "rules in order within an admin policy",
            policies: "ANP metadata: {name: ordered}\nspec:\n  priority: 1\n  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress:\n  - {name: no-clients, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}]}\n  - {name: blue, action: Allow, from: [{namespaces: {matchLabels: {team: blue}}}]}\n  - {name: rest, action: Deny, from: [{namespaces: {}}]}",
            flows: &[
                ("b/z -> a/x tcp/80", Deny),
                ("b/x -> a/x tcp/80", Allow),
                ("c/x -> a/x tcp/80", Deny),
                ("c/x -> b/x tcp/80", Allow),
            ],
        },
        Case {
            name: "Pass skips the remaining admin rules and hands over to NetworkPolicy",
            policies: "ANP metadata: {name: pass}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{namespaces: {matchLabels: {team: blue}}}]}]\n---\nANP metadata: {name: later}\nspec:\n  priority: 2\n  subject: {namespaces: {}}\n  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n---\nNP metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}",
            flows: &[
                ("b/z -> a/x tcp/80", Deny),
                ("c/z -> a/x tcp/80", Allow),
                ("b/z -> c/x tcp/80", Allow),
            ],
        },
        Case {
            name: "Pass without a NetworkPolicy goes to the baseline",
            policies: "ANP metadata: {name: pass}\nspec:\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{namespaces: {matchLabels: {team: blue}}}]}]\n---\nBANP metadata: {name: default}\nspec:\n  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]",
            flows: &[("b/z -> a/x tcp/80", Deny), ("b/z -> c/x tcp/80", Allow)],
        },
        Case {
            name: "a NetworkPolicy that selects the pod beats the baseline",
            policies: "BANP metadata: {name: default}\nspec:\n  subject: {namespaces: {matchLabels: {team: red}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n---\nNP metadata: {name: web, namespace: a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
            flows: &[
                ("b/z -> a/x tcp/80", Allow),
                ("b/z -> a/y tcp/5432", Deny),
                ("198.51.100.9 -> a/y tcp/5432", Allow),
            ],
        },
        Case {
            name: "baseline rules in order, Allow before Deny",
            policies: "BANP metadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  egress:\n  - {action: Allow, to: [{networks: [10.0.0.0/16]}]}\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}",
            flows: &[
                ("a/z -> b/x tcp/80", Allow),
                ("a/z -> 198.51.100.9 tcp/443", Deny),
            ],
        },
        Case {
            name: "networks peers match outside addresses and pods alike",
            policies: "ANP metadata: {name: nets}\nspec:\n  priority: 5\n  subject: {namespaces: {matchLabels: {team: red}}}\n  egress:\n  - {action: Deny, to: [{networks: [198.51.100.0/24, 10.0.2.0/24]}]}",
            flows: &[
                ("a/x -> 198.51.100.9 tcp/443", Deny),
                ("a/x -> b/x tcp/80", Deny),
                ("a/x -> c/x tcp/80", Allow),
                ("b/x -> 198.51.100.9 tcp/443", Allow),
            ],
        },
        Case {
            name: "nodes peers match the selected nodes' addresses",
            policies: "ANP metadata: {name: nodes}\nspec:\n  priority: 5\n  subject: {namespaces: {}}\n  egress:\n  - {action: Allow, to: [{nodes: {matchLabels: {role: worker}}}]}\n  - {action: Deny, to: [{networks: [192.0.2.0/24]}]}",
            flows: &[
                ("a/z -> 192.0.2.1 tcp/10250", Allow),
                ("a/z -> 192.0.2.2 tcp/10250", Deny),
            ],
        },
        Case {
            name: "admin ports: range, and a named port with the container port's protocol",
            policies: "ANP metadata: {name: ports}\nspec:\n  priority: 5\n  subject: {namespaces: {matchLabels: {team: red}}}\n  egress:\n  - {action: Deny, to: [{namespaces: {}}], ports: [{namedPort: dns}, {portRange: {start: 5000, end: 5500}}]}",
            flows: &[
                ("a/z -> b/x udp/53", Deny),
                ("a/z -> b/x tcp/53", Allow),
                ("a/z -> b/y tcp/5432", Deny),
                ("a/z -> b/y udp/5432", Allow),
                ("a/z -> b/x tcp/80", Allow),
            ],
        },
        Case {
            name: "subject by pods",
            policies: "ANP metadata: {name: dbs}\nspec:\n  priority: 5\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]",
            flows: &[
                ("a/z -> a/y tcp/5432", Deny),
                ("c/z -> b/y tcp/5432", Deny),
                ("a/z -> a/x tcp/80", Allow),
                ("198.51.100.9 -> a/y tcp/5432", Allow),
            ],
        },
        Case {
            name: "an unsupported peer fails closed",
            policies: "ANP metadata: {name: allow-domain}\nspec:\n  priority: 1\n  subject: {namespaces: {matchLabels: {team: red}}}\n  egress: [{action: Allow, to: [{domainNames: ['*.example.com']}]}]\n---\nANP metadata: {name: deny-domain}\nspec:\n  priority: 2\n  subject: {namespaces: {matchLabels: {team: blue}}}\n  egress: [{action: Deny, to: [{domainNames: ['*.example.com']}]}]",
            flows: &[
                ("a/z -> 198.51.100.9 tcp/443", Allow),
                ("b/z -> 198.51.100.9 tcp/443", Deny),
                ("b/z -> c/x tcp/80", Deny),
                ("c/z -> 198.51.100.9 tcp/443", Allow),
            ],
        },
        Case {
            name: "host-network pods are addresses, not pods; a pod's own node always reaches it",
            policies: "NP metadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n---\nNP metadata: {name: web, namespace: b}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}}]}]",
            flows: &[
                ("198.51.100.9 -> 192.0.2.1 tcp/10250", Allow),
                ("192.0.2.1 -> b/x tcp/80", Allow),
                ("192.0.2.2 -> b/x tcp/80", Deny),
                ("a/z -> b/x tcp/80", Allow),
            ],
        },
    ]
}

#[test]
fn every_case_gets_its_verdicts() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let snap = snapshot(&expand(case.policies));
        let world = World::new(&snap);
        for (text, expected) in case.flows {
            let decision = world.decide(&flow(text));
            checked += 1;
            if decision.verdict != *expected {
                failures.push(format!(
                    "{}: {text}: {:?}, expected {expected:?} ({})",
                    case.name,
                    decision.verdict,
                    decision.why.join("; ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} flows wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_reason_names_the_deciding_policy_and_rule() {
    let snap = snapshot(&expand(
        "ANP metadata: {name: guard}\nspec:\n  priority: 3\n  subject: {namespaces: {}}\n  ingress: [{name: no-blue, action: Deny, from: [{namespaces: {matchLabels: {team: blue}}}]}]",
    ));
    let world = World::new(&snap);
    let d = world.decide(&flow("b/z -> a/x tcp/80"));
    assert_eq!(d.verdict, Deny);
    assert_eq!(
        d.why,
        [
            "egress of b/z: no policy decides: allowed",
            "ingress of a/x: AdminNetworkPolicy guard ingress[0] (no-blue) Deny"
        ]
    );
}

/// Every case's table, and every diff from one case's table to the next, is accepted by the
/// real nft (in a namespace of its own).
#[test]
fn the_kernel_accepts_every_case_as_a_table_and_as_a_diff() {
    use netd_nft::Applier as _;
    if !netd_testnet::can_run(&[]) {
        return;
    }
    let ns = netd_testnet::Ns::new("policy");
    let mut nft = netd_nft::Nft::in_netns(&ns.name);
    let mut previous: Option<netd_nft::Table> = None;
    for case in cases() {
        let snap = snapshot(&expand(case.policies));
        let world = World::new(&snap);
        let table = netd_policy::plan::plan(&world, "node-1");
        let script = netd_nft::render(&table).expect("valid names");
        if let Err(e) = nft.apply(&script) {
            panic!("{}: the full table: {e}\n{script}", case.name);
        }
        if let Some(before) = previous.take() {
            // Back to the previous case's table, then forward again by diffs.
            nft.apply(&netd_nft::render(&before).expect("render"))
                .expect("previous table");
            let script = netd_nft::diff(&before, &table).expect("diff");
            if let Err(e) = nft.apply(&script) {
                panic!(
                    "{}: the diff from the case before: {e}\n{script}",
                    case.name
                );
            }
        }
        previous = Some(table);
    }
}

/// The case cluster as network namespaces: every pod on one bridge in the node (all are on
/// node-1), the node at 192.0.2.1, an outside host at 192.0.2.2 (node-2's address) and
/// 198.51.100.9. Each case's table is applied to the node and every TCP and UDP connection
/// of the case is made for real: an allowed one must be answered, a denied one dropped.
/// (SCTP connections are left out: the test kernel has no SCTP sockets.)
#[test]
fn every_case_holds_for_real_traffic() {
    use netd_nft::Applier as _;
    use netd_testnet::{Outcome, Server, tcp_from, udp_from};
    use std::collections::BTreeSet;
    use std::time::Duration;

    if !netd_testnet::can_run(&[]) {
        return;
    }
    let net = support::Net::new();
    let ns_of = |end: &str| net.ns_of(end);
    // A server on every destination address and port any case uses.
    let mut served = BTreeSet::new();
    for case in cases() {
        for (text, _) in case.flows {
            let words: Vec<&str> = text.split_whitespace().collect();
            let port: u16 = words[3]
                .split_once('/')
                .expect("proto/port")
                .1
                .parse()
                .expect("port");
            if served.insert((words[2].to_string(), port)) {
                Server::start(ns_of(words[2]), address(words[2]), port);
            }
        }
    }
    let mut nft = netd_nft::Nft::in_netns(&net.node.name);
    let wait = Duration::from_millis(700);
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let snap = snapshot(&expand(case.policies));
        let world = World::new(&snap);
        let script = netd_nft::render(&netd_policy::plan::plan(&world, "node-1")).expect("render");
        nft.apply(&script).expect("the table applies");
        for (text, expected) in case.flows {
            let f = flow(text);
            let words: Vec<&str> = text.split_whitespace().collect();
            let from = ns_of(words[0]);
            // Hosts with several addresses speak from the one the case names.
            let bind = (!words[0].contains('/')).then_some(f.src);
            let outcome = match f.protocol {
                Protocol::Tcp => tcp_from(from, bind, f.dst, f.port, wait),
                Protocol::Udp => udp_from(from, bind, f.dst, f.port, wait),
                Protocol::Sctp => continue,
            };
            checked += 1;
            let ok = match (expected, &outcome) {
                (Allow, Outcome::Answered { client, .. }) => *client == f.src,
                (Deny, Outcome::TimedOut) => true,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{}: {text}: {outcome:?}, expected {expected:?}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} connections wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
