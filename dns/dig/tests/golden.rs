//! cdig against the real dig: both ask the same server the same question with the same
//! arguments, and their outputs must be the same line for line once the fields that differ on
//! every run (id, query time, date, the program's name and version) are masked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};

use integration::{fixture_cluster, have_tool, start_server};

/// Masks what differs between runs.
fn mask(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.starts_with(";; WHEN: ") {
                ";; WHEN: <masked>".to_string()
            } else if line.starts_with(";; Query time: ") {
                ";; Query time: <masked>".to_string()
            } else if line.starts_with("; <<>> ") {
                let args = line.splitn(3, "<<>>").nth(2).unwrap_or_default();
                format!("; <<>> <program> <<>>{args}")
            } else if let Some((head, _)) = line.split_once(", id: ") {
                format!("{head}, id: <masked>")
            } else if let Some(rest) = line.strip_prefix("; COOKIE: ") {
                let verdict = rest.split_once(' ').map(|(_, v)| v).unwrap_or_default();
                format!("; COOKIE: <masked> {verdict}")
            } else if line.trim_start().starts_with("id: ") || line.contains("!!timestamp ") {
                let indent = line.len() - line.trim_start().len();
                let key = line.trim_start().split(':').next().unwrap_or_default();
                format!("{}{key}: <masked>", " ".repeat(indent))
            } else if let Some((head, _)) = line
                .split_once(" in ")
                .filter(|(_, t)| t.ends_with(" ms.") || t.ends_with(" ms"))
            {
                format!("{head} in <masked>")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Run {
    stdout: String,
    code: i32,
}

fn run(program: &str, server: SocketAddr, args: &[&str]) -> Run {
    let output = Command::new(program)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("runs");
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        code: output.status.code().unwrap_or(-1),
    }
}

/// Runs dig and cdig with `args` and requires the same masked output and exit code.
fn same(server: SocketAddr, args: &[&str]) {
    let dig = run("dig", server, args);
    let cdig = run(env!("CARGO_BIN_EXE_cdig"), server, args);
    let (expected, got) = (mask(&dig.stdout), mask(&cdig.stdout));
    for (i, (e, g)) in expected.lines().zip(got.lines()).enumerate() {
        assert_eq!(
            g,
            e,
            "line {} differs for {args:?}\n--- dig\n{expected}\n--- cdig\n{got}",
            i + 1
        );
    }
    assert_eq!(
        got.lines().count(),
        expected.lines().count(),
        "{args:?}\n--- dig\n{expected}\n--- cdig\n{got}"
    );
    assert_eq!(cdig.code, dig.code, "exit code for {args:?}");
    assert!(
        !expected.is_empty() || args.contains(&"+short"),
        "dig printed nothing for {args:?}"
    );
}

#[test]
fn cdig_prints_what_dig_prints_for_the_cluster_server() {
    if !have_tool("dig") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(start_server(&fixture_cluster(), |_| {}));
    let addr = server.server.local_addrs()[0];
    let cases: &[&[&str]] = &[
        &["web.alpha.svc.cluster.local"],
        &["dual.alpha.svc.cluster.local", "AAAA"],
        &["AAAA", "dual.alpha.svc.cluster.local"],
        &["-t", "SRV", "_http._tcp.hl.alpha.svc.cluster.local"],
        &["-x", "10.96.1.1"],
        &["nope.alpha.svc.cluster.local"],
        &["alpha.svc.cluster.local"],
        &["web.alpha.svc.cluster.local", "+short"],
        &["web.alpha.svc.cluster.local", "+tcp"],
        &["web.alpha.svc.cluster.local", "+vc", "+norecurse"],
        &["web.alpha.svc.cluster.local", "+noall", "+answer"],
        &[
            "web.alpha.svc.cluster.local",
            "+nocmd",
            "+nostats",
            "+noquestion",
        ],
        &["web.alpha.svc.cluster.local", "+nocomments"],
        &["web.alpha.svc.cluster.local", "+noedns"],
        &["web.alpha.svc.cluster.local", "+dnssec", "+bufsize=4096"],
        &["cluster.local", "SOA", "+nottlid"],
        &["cluster.local", "SOA", "+noclass"],
        &["cluster.local", "SOA", "+nottlid", "+noclass"],
        &["cluster.local", "NS", "+noadditional"],
        &[
            "web.alpha.svc.cluster.local",
            "hl.alpha.svc.cluster.local",
            "+nostats",
        ],
        &[
            "+noall",
            "+answer",
            "web.alpha.svc.cluster.local",
            "cluster.local",
            "SOA",
        ],
        &["dns-version.cluster.local", "TXT"],
        &["version.bind", "TXT", "CH"],
        &[],
        &["web.alpha.svc.cluster.local", "+yaml"],
        &[
            "_http._tcp.hl.alpha.svc.cluster.local",
            "SRV",
            "+yaml",
            "+tcp",
        ],
        &["nope.alpha.svc.cluster.local", "+yaml", "+dnssec"],
        &[
            "web.alpha.svc.cluster.local",
            "cluster.local",
            "SOA",
            "+yaml",
        ],
        &["web.alpha.svc.cluster.local", "+short", "+identify"],
        &["web.alpha.svc.cluster.local", "+nostats", "+identify"],
        &["+domain=alpha.svc.cluster.local", "web"],
        &[
            "+domain=svc.cluster.local",
            "web.alpha",
            "+ndots=2",
            "+noall",
            "+answer",
        ],
        &[
            "+domain=svc.cluster.local",
            "nothere",
            "+noall",
            "+question",
        ],
        &["+search", "+ndots=5", "web.alpha.svc.cluster.local."],
        // dig's own rules, found by running both side by side.
        &["web.alpha.svc.cluster.local", "ANY"],
        &["web.alpha.svc.cluster.local", "ANY", "+notcp"],
        &["web.alpha.svc.cluster.local", "+edns=1"],
        &["web.alpha.svc.cluster.local", "+edns=1", "+short"],
        &[
            "AAAA",
            "dual.alpha.svc.cluster.local",
            "web.alpha.svc.cluster.local",
        ],
        &["-c", "CH", "dns-version.cluster.local", "TXT"],
        &["dual.alpha.svc.cluster.local", "AAAA", "A"],
        &["-t", "A", "-t", "AAAA", "dual.alpha.svc.cluster.local"],
        &["+nocmd", "web.alpha.svc.cluster.local", "+cmd"],
        &["web.alpha.svc.cluster.local", "+short", "+noanswer"],
        &["web.alpha.svc.cluster.local", "+yaml", "+noyaml"],
        &["web.alpha.svc.cluster.local", "+noedns", "+dnssec"],
        &["web.alpha.svc.cluster.local", "+noedns", "+cookie"],
        &["-x", "10.96.1"],
        &["web", "+domain=alpha.svc.cluster.local", "+nosearch"],
        &["a\\032b.alpha.svc.cluster.local"],
        &["x#y.alpha.svc.cluster.local", "TYPE0"],
    ];
    for args in cases {
        same(addr, args);
    }
    // Batch files: a lookup per line, with the command line's options.
    let dir = tempfile_dir();
    let batch = dir.join("batch.txt");
    std::fs::write(
        &batch,
        "web.alpha.svc.cluster.local\n\ncluster.local SOA +nottlid\n-x 10.96.1.1 +short\n",
    )
    .expect("batch file");
    same(
        addr,
        &["-f", batch.to_str().expect("utf-8"), "+noall", "+answer"],
    );
    same(addr, &["-f", batch.to_str().expect("utf-8")]);
    // Leading blank and comment lines are skipped; +short on a line holds for the later ones.
    let leading = dir.join("leading.txt");
    std::fs::write(
        &leading,
        "\n# a comment\n; another\nweb.alpha.svc.cluster.local +short\ndual.alpha.svc.cluster.local AAAA\n\n",
    )
    .expect("batch file");
    same(addr, &["-f", leading.to_str().expect("utf-8")]);
    runtime.block_on(server.shutdown());
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cdig-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A server that answers every UDP query with TC set and no records, and over TCP with an A
/// record: both programs must say they retry over TCP and print the TCP answer.
#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    if !have_tool("dig") {
        return;
    }
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = udp.local_addr().expect("addr").port();
    let tcp = TcpListener::bind(("127.0.0.1", port)).expect("tcp on the same port");
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((size, peer)) = udp.recv_from(&mut buffer) {
            let query = &buffer[..size];
            let question_end = question_end(query);
            let mut reply = query[..question_end].to_vec();
            reply[2] = 0x80 | 0x04 | 0x02 | (query[2] & 0x01); // QR AA TC, RD copied
            reply[3] = 0x00;
            reply[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
            let _ = udp.send_to(&reply, peer);
        }
    });
    std::thread::spawn(move || {
        for stream in tcp.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut length = [0u8; 2];
            if stream.read_exact(&mut length).is_err() {
                continue;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
            if stream.read_exact(&mut query).is_err() {
                continue;
            }
            let question_end = question_end(&query);
            let mut reply = query[..question_end].to_vec();
            reply[2] = 0x80 | 0x04 | (query[2] & 0x01);
            reply[3] = 0x00;
            reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
            // The answer: a pointer to the question name, A IN, TTL 30, 192.0.2.7.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 7]);
            let mut framed = u16::try_from(reply.len())
                .expect("short")
                .to_be_bytes()
                .to_vec();
            framed.extend_from_slice(&reply);
            let _ = stream.write_all(&framed);
        }
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    same(addr, &["big.example", "+noedns"]);
    let cdig = run(
        env!("CARGO_BIN_EXE_cdig"),
        addr,
        &["big.example", "+noedns"],
    );
    assert!(
        cdig.stdout.contains(";; Truncated, retrying in TCP mode."),
        "{}",
        cdig.stdout
    );
    assert!(cdig.stdout.contains("(TCP)"), "{}", cdig.stdout);
}

/// The end of the question section of a query with one question.
fn question_end(query: &[u8]) -> usize {
    let mut at = 12;
    while at < query.len() && query[at] != 0 {
        at += usize::from(query[at]) + 1;
    }
    at + 5
}

#[test]
fn no_server_and_no_batch_file_exit_as_dig_does() {
    if !have_tool("dig") {
        return;
    }
    // A port nobody listens on: both print the same and exit 9.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = socket.local_addr().expect("addr");
    drop(socket);
    same(addr, &["x.example", "+timeout=1"]);
    same(addr, &["x.example", "+tries=2"]);
    same(addr, &["x.example", "+tcp"]);
    same(addr, &["x.example", "+tcp", "+tries=2"]);
    let missing = Command::new(env!("CARGO_BIN_EXE_cdig"))
        .args(["-f", "/nonexistent/batch"])
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(8));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("couldn't open specified batch file"),
        "{stderr}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_cdig"))
        .args(["x", "+frobnicate"])
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("Invalid option: +frobnicate\nUsage:")
    );
}

#[test]
fn a_closed_pipe_ends_the_run_quietly() {
    if !have_tool("dig") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(start_server(&fixture_cluster(), |_| {}));
    let addr = server.server.local_addrs()[0];
    let dir = tempfile_dir();
    let batch = dir.join("many.txt");
    std::fs::write(&batch, "web.alpha.svc.cluster.local\n".repeat(300)).expect("batch");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdig"))
        .args([
            &format!("@{}", addr.ip()),
            "-p",
            &addr.port().to_string(),
            "-f",
            batch.to_str().expect("utf-8"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = [0u8; 1];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("one byte");
    // Our end of the pipe is closed now, as `| head -c1` would.
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    runtime.block_on(server.shutdown());
}

#[test]
fn explain_shows_every_name_a_pod_tries() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(start_server(&fixture_cluster(), |_| {}));
    let addr = server.server.local_addrs()[0];
    let explain = |args: &[&str]| -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_cdig"))
            .args([
                &format!("@{}", addr.ip()),
                "-p",
                &addr.port().to_string(),
                "--explain",
            ])
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let rows = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.trim_start_matches(";;").split_whitespace().collect();
                (fields.len() >= 4 && fields[0].parse::<u32>().is_ok())
                    .then(|| (fields[1].to_string(), fields[2].to_string()))
            })
            .collect()
    };
    let short = explain(&["web", "--namespace", "alpha"]);
    assert_eq!(
        rows(&short),
        [(
            "web.alpha.svc.cluster.local.".to_string(),
            "NOERROR".to_string()
        )]
    );
    assert!(
        short.contains("<= answer") && short.contains("Answered by try 1 (of up to 4)"),
        "{short}"
    );
    let two = explain(&["web.alpha", "--namespace", "beta"]);
    assert_eq!(
        rows(&two),
        [
            (
                "web.alpha.beta.svc.cluster.local.".to_string(),
                "NXDOMAIN".to_string()
            ),
            (
                "web.alpha.svc.cluster.local.".to_string(),
                "NOERROR".to_string()
            ),
        ]
    );
    assert!(
        two.contains("asking for web.alpha.svc.cluster.local. (with the final dot) skips it"),
        "{two}"
    );
    let none = explain(&[
        "nothere",
        "AAAA",
        "--namespace",
        "alpha",
        "--cluster-domain",
        "cluster.local",
    ]);
    assert_eq!(rows(&none).len(), 4, "{none}");
    assert!(none.contains("No answer after 4 tries"), "{none}");
    // Not a terminal: no colour unless asked.
    assert!(!short.contains('\x1b'));
    let colored = explain(&["web", "--namespace", "alpha", "--color", "always"]);
    assert!(colored.contains("\x1b[32m"), "{colored}");
    runtime.block_on(server.shutdown());
}

#[test]
fn json_is_an_rfc_8427_message_object() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(start_server(&fixture_cluster(), |_| {}));
    let addr = server.server.local_addrs()[0];
    let output = Command::new(env!("CARGO_BIN_EXE_cdig"))
        .args([&format!("@{}", addr.ip()), "-p", &addr.port().to_string()])
        .args(["_http._tcp.web.alpha.svc.cluster.local", "SRV", "+json"])
        .output()
        .expect("runs");
    let message: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(message["QNAME"], "_http._tcp.web.alpha.svc.cluster.local.");
    assert_eq!(message["QTYPEname"], "SRV");
    assert_eq!(
        (
            message["QR"].as_u64(),
            message["AA"].as_u64(),
            message["RCODE"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    let answers = message["answerRRs"].as_array().expect("answers");
    assert_eq!(message["ANCOUNT"].as_u64(), Some(answers.len() as u64));
    let first = &answers[0];
    assert_eq!(first["TYPE"], 33);
    assert!(
        first["rdataSRV"]
            .as_str()
            .is_some_and(|d| d.ends_with(" web.alpha.svc.cluster.local.")),
        "{first}"
    );
    assert!(first["RDATAHEX"].as_str().is_some_and(|h| !h.is_empty()));
    runtime.block_on(server.shutdown());
}

/// A server that answers with an A record and a COOKIE option: the client cookie followed by
/// a server cookie (`server_cookie`), or the client cookie alone.
fn cookie_server(server_cookie: bool) -> SocketAddr {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = udp.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((size, peer)) = udp.recv_from(&mut buffer) {
            let query = &buffer[..size];
            let end = question_end(query);
            // The query's OPT record follows the question: its options start 11 bytes in.
            let options = &query[(end + 11).min(size)..];
            let client =
                (options.len() >= 12 && options[..2] == [0, 10]).then(|| options[4..12].to_vec());
            let mut reply = query[..end].to_vec();
            reply[2] = 0x80 | 0x04 | (query[2] & 0x01);
            reply[3] = 0x00;
            reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 1]);
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 8]);
            let mut cookie = client.unwrap_or_default();
            if server_cookie {
                cookie.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            }
            let option_length = u16::try_from(cookie.len()).expect("short");
            reply.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
            reply.extend_from_slice(&(option_length + 4).to_be_bytes());
            reply.extend_from_slice(&[0, 10]);
            reply.extend_from_slice(&option_length.to_be_bytes());
            reply.extend_from_slice(&cookie);
            let _ = udp.send_to(&reply, peer);
        }
    });
    addr
}

#[test]
fn a_returned_cookie_is_shown_and_judged_as_dig_does() {
    if !have_tool("dig") {
        return;
    }
    for server_cookie in [true, false] {
        let addr = cookie_server(server_cookie);
        same(addr, &["c.example", "+nostats"]);
        let cdig = run(env!("CARGO_BIN_EXE_cdig"), addr, &["c.example"]);
        let verdict = if server_cookie { "(good)" } else { "(echoed)" };
        assert!(cdig.stdout.contains(verdict), "{}", cdig.stdout);
    }
}
