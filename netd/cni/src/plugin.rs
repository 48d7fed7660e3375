//! The commands: what ADD, DEL, CHECK, STATUS, VERSION and GC do to the node.
//!
//! ```text
//!  node namespace                                   pod namespace (CNI_NETNS)
//!  ┌──────────────────────────────────────┐         ┌──────────────────────────┐
//!  │ cni0 (bridge, 10.22.0.1/16 gateway)  │         │ eth0 (CNI_IFNAME)        │
//!  │   └─ veth<hash> ═════════════════════╪═ veth ══╪═ 10.22.0.5/16            │
//!  │ nft table inet netd-cni: masquerade  │         │ default via 10.22.0.1    │
//!  └──────────────────────────────────────┘         └──────────────────────────┘
//! ```
//!
//! The host end's name is derived from the network, container ID and interface name, so DEL
//! and CHECK find it without state; addresses come from the built-in allocator (`ipam`) or a
//! delegated IPAM plugin. ADD undoes what it made when a later step fails.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use ipnet::IpNet;
use serde_json::Value;

use crate::config::{self, Ipam, IpamConfig, NetConf};
use crate::ipam::{self, Store};
use crate::masq;
use crate::netlink::{Link, Netlink};
use crate::netns::Netns;
use crate::protocol::{
    self, CURRENT_VERSION, CniError, Code, Command, Interface, Invocation, IpConfig, Result, Route,
    Success, invalid_config, system,
};

/// What the binary prints: the version for the error object, and the outcome.
#[derive(Debug)]
pub struct Outcome {
    pub version: String,
    pub result: Result<Option<Value>>,
}

/// Runs one invocation: `invocation` from the environment, `stdin` the configuration.
pub fn run(invocation: Result<Invocation>, stdin: &[u8]) -> Outcome {
    let parsed = config::parse_json(stdin);
    let version = parsed
        .as_ref()
        .ok()
        .and_then(config::version_of)
        .unwrap_or(CURRENT_VERSION)
        .to_string();
    let result = invocation.and_then(|invocation| {
        if invocation.command == Command::Version {
            // VERSION may come with no configuration at all.
            if stdin.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(protocol::version_result(CURRENT_VERSION)));
            }
            parsed.as_ref().map_err(Clone::clone)?;
            return Ok(Some(protocol::version_result(&version)));
        }
        let value = parsed.as_ref().map_err(Clone::clone)?;
        let conf = NetConf::from_json(value)?;
        protocol::check_version(&conf.cni_version, invocation.command)?;
        let log = Log::new(conf.log_file.as_deref());
        let started = Instant::now();
        let request = Request {
            invocation: &invocation,
            conf: &conf,
            stdin,
            log: &log,
        };
        let outcome = match invocation.command {
            Command::Add => request
                .add()
                .map(|success| Some(success.render(&conf.cni_version))),
            Command::Del => request.del().map(|()| None),
            Command::Check => request.check().map(|()| None),
            Command::Status => request.status().map(|()| None),
            Command::Gc => request.gc().map(|()| None),
            Command::Version => Ok(None),
        };
        let took = started.elapsed().as_secs_f64() * 1000.0;
        let how = match &outcome {
            Ok(_) => format!("ok in {took:.1} ms"),
            Err(err) => err.to_string(),
        };
        log.line(format_args!(
            "{} network={} container={} ifname={}: {how}",
            invocation.command.as_str(),
            conf.name,
            invocation.container_id,
            invocation.ifname
        ));
        outcome
    });
    Outcome { version, result }
}

/// Logs go to `logFile` when the configuration names one, to stderr otherwise; never stdout.
#[derive(Debug)]
struct Log {
    file: Option<PathBuf>,
}

impl Log {
    fn new(file: Option<&Path>) -> Log {
        Log {
            file: file.map(Path::to_path_buf),
        }
    }

    fn line(&self, message: std::fmt::Arguments<'_>) {
        let line = format!("netd-cni[{}]: {message}\n", std::process::id());
        let written = self.file.as_ref().map(|path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut file| file.write_all(line.as_bytes()))
        });
        if !matches!(written, Some(Ok(()))) {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

struct Request<'a> {
    invocation: &'a Invocation,
    conf: &'a NetConf,
    stdin: &'a [u8],
    log: &'a Log,
}

/// What ADD has made so far, to be undone when a later step fails.
#[derive(Default)]
struct Undo {
    veth: Option<String>,
    allocated: bool,
    delegated: bool,
}

/// The host end of an attachment's veth pair: `veth` and 11 hex digits of a hash of the
/// network, container ID and interface name (15 bytes, the kernel's limit).
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: stable across releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [network, "\0", container_id, "\0", ifname]
        .iter()
        .flat_map(|s| s.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:011x}", hash >> 20)
}

fn net_error(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> CniError {
    move |err| system(what, err)
}

impl Request<'_> {
    fn host_veth(&self) -> String {
        host_veth_name(
            &self.conf.name,
            &self.invocation.container_id,
            &self.invocation.ifname,
        )
    }

    /// Opens the pod's namespace and a netlink socket inside it.
    fn pod(&self) -> Result<(Netns, Netlink)> {
        let path = self.invocation.netns.as_deref().unwrap_or_default();
        let home = Netns::current().map_err(net_error("opening this process's namespace"))?;
        let pod = Netns::open(Path::new(path)).map_err(|err| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_NETNS={path:?}: {err}"),
            )
        })?;
        let inside = match pod.run(&home, Netlink::open) {
            Ok(socket) => socket.map_err(|err| system(format_args!("netlink in {path}"), err))?,
            // A path that is no longer a namespace (unmounted and left as a plain file).
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_NETNS={path:?} is not a network namespace"),
                ));
            }
            Err(err) => return Err(system(format_args!("entering {path}"), err)),
        };
        Ok((pod, inside))
    }

    fn add(&self) -> Result<Success> {
        let ifname = &self.invocation.ifname;
        let netns_path = self.invocation.netns.clone().unwrap_or_default();
        let (pod, mut inside) = self.pod()?;
        if inside
            .link(ifname)
            .map_err(net_error("looking up the pod's interface"))?
            .is_some()
        {
            return Err(CniError::new(
                Code::AlreadyExists,
                format!("interface {ifname} already exists in {netns_path}"),
            ));
        }
        let mut host = Netlink::open().map_err(net_error("opening netlink"))?;
        let mut undo = Undo::default();
        let made = self.add_steps(&pod, &mut host, &mut inside, &mut undo);
        if let Err(err) = &made {
            self.log
                .line(format_args!("ADD failed, undoing what it made: {err}"));
            self.undo(&mut host, undo);
        }
        made
    }

    fn add_steps(
        &self,
        pod: &Netns,
        host: &mut Netlink,
        inside: &mut Netlink,
        undo: &mut Undo,
    ) -> Result<Success> {
        let conf = self.conf;
        let ifname = &self.invocation.ifname;
        // Addresses first: a duplicate allocation is refused before anything is created.
        let (ips, routes, ipam_dns) = match &conf.ipam {
            Ipam::None => (Vec::new(), Vec::new(), Default::default()),
            Ipam::Builtin(ipam) => {
                let store = Store::open(&ipam.data_dir, &conf.name, ipam.lock_wait)?;
                let ips = ipam::allocate(&store, ipam, &self.invocation.container_id, ifname)?;
                undo.allocated = true;
                (ips, ipam.routes.clone(), Default::default())
            }
            Ipam::Delegate(kind) => {
                // SPEC.md section 4: a failed delegated ADD is followed by its DEL too.
                undo.delegated = true;
                let answer = self.delegate(kind, Command::Add)?;
                let answer = answer.ok_or_else(|| {
                    CniError::new(Code::Delegate, format!("{kind} printed no result for ADD"))
                })?;
                let success = Success::parse(&answer).map_err(|err| {
                    CniError::new(Code::Delegate, format!("{kind}'s result: {err}"))
                })?;
                if success.ips.is_empty() {
                    return Err(CniError::new(
                        Code::Delegate,
                        format!("{kind} returned no address"),
                    ));
                }
                (success.ips, success.routes, success.dns)
            }
        };
        // As the reference plugin does: with isGateway, an address whose IPAM gave no gateway
        // gets its subnet's first address.
        let ips: Vec<IpConfig> = ips
            .into_iter()
            .map(|mut ip| {
                if conf.is_gateway && ip.gateway.is_none() {
                    let first = config::to_u128(ip.address.network()) + 1;
                    ip.gateway = Some(config::from_u128(first, ip.address.addr()));
                }
                ip
            })
            .collect();
        let bridge = self.ensure_bridge(host)?;
        let veth = self.host_veth();
        host.add_veth(&veth, ifname, pod.file().as_raw_fd(), conf.mtu)
            .map_err(|err| {
                if err.kind() == io::ErrorKind::AlreadyExists {
                    CniError::new(
                        Code::AlreadyExists,
                        format!("{veth}, this attachment's host interface, already exists"),
                    )
                } else {
                    system(format_args!("creating veth pair {veth}/{ifname}"), err)
                }
            })?;
        undo.veth = Some(veth.clone());
        let host_end = host
            .link(&veth)
            .map_err(net_error("looking up the host interface"))?
            .ok_or_else(|| system(&veth, "vanished after it was created"))?;
        host.set_up(host_end.index, Some(bridge.index))
            .map_err(net_error(format_args!(
                "attaching {veth} to {}",
                conf.bridge
            )))?;
        if conf.hairpin_mode {
            host.set_hairpin(host_end.index)
                .map_err(net_error(format_args!("hairpin mode on {veth}")))?;
        }
        let pod_end = inside
            .link(ifname)
            .map_err(net_error("looking up the pod's interface"))?
            .ok_or_else(|| system(ifname, "missing from the pod after it was created"))?;
        for ip in &ips {
            inside
                .add_address(pod_end.index, ip.address)
                .map_err(net_error(format_args!("adding {} to {ifname}", ip.address)))?;
        }
        inside
            .set_up(pod_end.index, None)
            .map_err(net_error(format_args!("setting {ifname} up")))?;
        let routes = self.pod_routes(&ips, routes);
        for route in &routes {
            let gw = route.gw.or_else(|| family_gateway(&ips, route.dst.addr()));
            inside
                .add_route(route.dst, gw, pod_end.index)
                .map_err(net_error(format_args!(
                    "adding route {} via {} in the pod",
                    route.dst,
                    gw.map_or("-".to_string(), |gw| gw.to_string())
                )))?;
        }
        if conf.is_gateway {
            for ip in &ips {
                let Some(gateway) = ip.gateway else { continue };
                let on_bridge = IpNet::new(gateway, ip.address.prefix_len())
                    .map_err(|err| system("gateway address", err))?;
                host.add_address(bridge.index, on_bridge)
                    .map_err(net_error(format_args!(
                        "adding gateway {on_bridge} to {}",
                        conf.bridge
                    )))?;
                enable_forwarding(gateway)?;
            }
        }
        if conf.ip_masq && !ips.is_empty() {
            let subnets: Vec<IpNet> = ips.iter().map(|ip| ip.address.trunc()).collect();
            masq::ensure(&subnets, &conf.non_masquerade_cidrs)?;
        }
        // The bridge's and the host end's addresses are read last: they settle once the port
        // is attached.
        let bridge = host
            .link(&conf.bridge)
            .map_err(net_error("reading the bridge"))?
            .unwrap_or(bridge);
        let host_end = host
            .link(&veth)
            .map_err(net_error("reading the host interface"))?
            .unwrap_or(host_end);
        let mut success = conf.prev_result.clone().unwrap_or_default();
        let base = success.interfaces.len();
        success.interfaces.push(Interface {
            name: bridge.name,
            mac: bridge.mac,
            mtu: bridge.mtu,
            ..Interface::default()
        });
        success.interfaces.push(Interface {
            name: host_end.name,
            mac: host_end.mac,
            mtu: host_end.mtu,
            ..Interface::default()
        });
        success.interfaces.push(Interface {
            name: pod_end.name,
            mac: pod_end.mac,
            mtu: pod_end.mtu,
            sandbox: self.invocation.netns.clone().unwrap_or_default(),
            ..Interface::default()
        });
        success.ips.extend(ips.into_iter().map(|ip| IpConfig {
            interface: Some(base + 2),
            ..ip
        }));
        success.routes.extend(routes);
        if !conf.dns.is_empty() {
            success.dns = conf.dns.clone();
        } else if !ipam_dns.is_empty() {
            success.dns = ipam_dns;
        }
        Ok(success)
    }

    /// The pod's routes: the IPAM routes, and a default route per family through its gateway
    /// when `isDefaultGateway` (unless the IPAM routes already have one).
    fn pod_routes(&self, ips: &[IpConfig], mut routes: Vec<Route>) -> Vec<Route> {
        if self.conf.is_default_gateway {
            for ip in ips {
                let v4 = ip.address.addr().is_ipv4();
                let has_default = routes
                    .iter()
                    .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4);
                let any: IpAddr = if v4 {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                if !has_default
                    && let Some(gw) = ip.gateway
                    && let Ok(dst) = IpNet::new(any, 0)
                {
                    routes.push(Route {
                        dst,
                        gw: Some(gw),
                        extra: Default::default(),
                    });
                }
            }
        }
        routes
    }

    fn ensure_bridge(&self, host: &mut Netlink) -> Result<Link> {
        let name = &self.conf.bridge;
        let found = host
            .link(name)
            .map_err(net_error(format_args!("looking up bridge {name}")))?;
        let link = match found {
            Some(link) => link,
            None => {
                match host.add_bridge(name, self.conf.mtu) {
                    // Another ADD created it first.
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    other => other.map_err(net_error(format_args!("creating bridge {name}")))?,
                }
                let link = host
                    .link(name)
                    .map_err(net_error(format_args!("looking up bridge {name}")))?
                    .ok_or_else(|| system(name, "vanished after it was created"))?;
                if let Some(mac) = crate::netlink::parse_mac(&link.mac) {
                    host.pin_mac(link.index, &mac)
                        .map_err(net_error("pinning the bridge's MAC"))?;
                }
                link
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(invalid_config(format!(
                "bridge: {name} exists but is a {}, not a bridge",
                link.kind.as_deref().unwrap_or("plain device")
            )));
        }
        if !link.up {
            host.set_up(link.index, None)
                .map_err(net_error(format_args!("setting {name} up")))?;
        }
        Ok(link)
    }

    /// Best effort: removes what a failed ADD made, logging what it could not.
    fn undo(&self, host: &mut Netlink, undo: Undo) {
        if let Some(veth) = undo.veth
            && let Err(err) = delete_link_named(host, &veth)
        {
            self.log.line(format_args!("undo: removing {veth}: {err}"));
        }
        if undo.allocated
            && let Ipam::Builtin(ipam) = &self.conf.ipam
            && let Err(err) = self.release(ipam)
        {
            self.log
                .line(format_args!("undo: releasing the addresses: {err}"));
        }
        if undo.delegated
            && let Ipam::Delegate(kind) = &self.conf.ipam
            && let Err(err) = self.delegate(kind, Command::Del)
        {
            self.log.line(format_args!("undo: {kind} DEL: {err}"));
        }
    }

    fn release(&self, ipam: &IpamConfig) -> Result<Vec<IpAddr>> {
        let store = Store::open(&ipam.data_dir, &self.conf.name, ipam.lock_wait)?;
        store.release(&self.invocation.container_id, &self.invocation.ifname)
    }

    /// DEL: removes the interface (if its namespace still exists) and the host end, and
    /// releases the addresses. Everything already gone is success; DEL can be repeated. A step
    /// that fails does not stop the others: the addresses are released whatever happened to the
    /// interfaces, and the first error is reported.
    fn del(&self) -> Result<()> {
        let mut first_error = self.del_interfaces().err();
        let released = match &self.conf.ipam {
            Ipam::None => Ok(()),
            Ipam::Builtin(ipam) => self.release(ipam).map(|released| {
                if !released.is_empty() {
                    let list: Vec<String> = released.iter().map(ToString::to_string).collect();
                    self.log
                        .line(format_args!("DEL released {}", list.join(", ")));
                }
            }),
            Ipam::Delegate(kind) => self.delegate(kind, Command::Del).map(drop),
        };
        if let Err(err) = released {
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn del_interfaces(&self) -> Result<()> {
        let ifname = &self.invocation.ifname;
        if let Some(path) = self.invocation.netns.as_deref() {
            match self.pod() {
                Ok((_, mut inside)) => {
                    if let Some(link) = inside
                        .link(ifname)
                        .map_err(net_error("looking up the pod's interface"))?
                    {
                        inside
                            .delete_link(link.index)
                            .map_err(net_error(format_args!("deleting {ifname} in {path}")))?;
                    }
                }
                // The namespace is gone, and the veth pair with it.
                Err(err) if err.code == Code::InvalidEnvironment => {
                    self.log
                        .line(format_args!("DEL: {err}; nothing to remove inside it"));
                }
                Err(err) => return Err(err),
            }
        }
        // The host end outlives the pod's namespace only if something else holds that open.
        let mut host = Netlink::open().map_err(net_error("opening netlink"))?;
        delete_link_named(&mut host, &self.host_veth())
    }

    /// CHECK: everything ADD made and `prevResult` lists is still there and as it was.
    fn check(&self) -> Result<()> {
        let conf = self.conf;
        let ifname = &self.invocation.ifname;
        let netns = self.invocation.netns.clone().unwrap_or_default();
        let prev = conf.prev_result.as_ref().ok_or_else(|| {
            invalid_config("CHECK needs prevResult, the result of the attachment's ADD")
        })?;
        let failed = |details: String| CniError::new(Code::CheckFailed, details);
        let (index, expected) = prev
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| &i.name == ifname && i.sandbox == netns)
            .ok_or_else(|| failed(format!("prevResult lists no interface {ifname} in {netns}")))?;
        let (_, mut inside) = self.pod().map_err(|err| failed(err.details))?;
        let pod_end = inside
            .link(ifname)
            .map_err(net_error("looking up the pod's interface"))?
            .ok_or_else(|| failed(format!("interface {ifname} is missing from {netns}")))?;
        if !expected.mac.is_empty() && !expected.mac.eq_ignore_ascii_case(&pod_end.mac) {
            return Err(failed(format!(
                "{ifname} has MAC {}, prevResult says {}",
                pod_end.mac, expected.mac
            )));
        }
        // The MTU prevResult gives, which a later plugin in the chain may have changed.
        if let Some(mtu) = expected.mtu
            && pod_end.mtu != Some(mtu)
        {
            return Err(failed(format!(
                "{ifname} has MTU {:?}, prevResult says {mtu}",
                pod_end.mtu
            )));
        }
        if !pod_end.up {
            return Err(failed(format!("{ifname} is down")));
        }
        let present = inside
            .addresses()
            .map_err(net_error("listing the pod's addresses"))?;
        let ours: Vec<&IpConfig> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none_or(|i| i == index))
            .collect();
        for ip in &ours {
            if !present
                .iter()
                .any(|a| a.index == pod_end.index && a.net == ip.address)
            {
                return Err(failed(format!("{ifname} lacks its address {}", ip.address)));
            }
        }
        let routes = inside
            .routes()
            .map_err(net_error("listing the pod's routes"))?;
        let gateways: Vec<IpConfig> = ours.iter().map(|ip| (*ip).clone()).collect();
        // Only the routes this plugin made: a later plugin in the chain may have added others.
        let made = match &conf.ipam {
            Ipam::Builtin(ipam) => self.pod_routes(&gateways, ipam.routes.clone()),
            Ipam::Delegate(_) => prev.routes.clone(),
            Ipam::None => Vec::new(),
        };
        for route in made.iter().filter(|r| !r.extra.contains_key("table")) {
            let gw = route
                .gw
                .or_else(|| family_gateway(&gateways, route.dst.addr()));
            let dst = route.dst.trunc();
            if !routes
                .iter()
                .any(|r| r.dst == dst && (gw.is_none() || r.gw == gw))
            {
                return Err(failed(format!(
                    "route {} via {} is missing from {netns}",
                    route.dst,
                    gw.map_or("-".to_string(), |g| g.to_string())
                )));
            }
        }
        let mut host = Netlink::open().map_err(net_error("opening netlink"))?;
        let bridge = host
            .link(&conf.bridge)
            .map_err(net_error("looking up the bridge"))?
            .filter(|link| link.kind.as_deref() == Some("bridge"))
            .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
        let veth = self.host_veth();
        let host_end = host
            .link(&veth)
            .map_err(net_error("looking up the host interface"))?
            .ok_or_else(|| failed(format!("{veth}, the host end of {ifname}, is missing")))?;
        if host_end.controller != Some(bridge.index) {
            return Err(failed(format!("{veth} is not attached to {}", conf.bridge)));
        }
        if conf.is_gateway {
            let on_bridge = host
                .addresses()
                .map_err(net_error("listing the bridge's addresses"))?;
            for ip in &ours {
                let Some(gateway) = ip.gateway else { continue };
                if !on_bridge
                    .iter()
                    .any(|a| a.index == bridge.index && a.net.addr() == gateway)
                {
                    return Err(failed(format!(
                        "gateway {gateway} is missing from {}",
                        conf.bridge
                    )));
                }
            }
        }
        match &conf.ipam {
            Ipam::None => {}
            Ipam::Builtin(ipam) => {
                let store = Store::open(&ipam.data_dir, &conf.name, ipam.lock_wait)?;
                let mut held: Vec<IpAddr> = store
                    .entries()?
                    .into_iter()
                    .filter(|e| {
                        e.container_id == self.invocation.container_id && &e.ifname == ifname
                    })
                    .map(|e| e.ip)
                    .collect();
                let mut listed: Vec<IpAddr> = ours.iter().map(|ip| ip.address.addr()).collect();
                held.sort();
                listed.sort();
                if held != listed {
                    return Err(failed(format!(
                        "the allocation store holds {held:?} for this attachment, prevResult lists {listed:?}"
                    )));
                }
            }
            Ipam::Delegate(kind) => {
                self.delegate(kind, Command::Check)?;
            }
        }
        if conf.ip_masq && !ours.is_empty() {
            let table = masq::current()?.ok_or_else(|| {
                failed(format!(
                    "table inet {}, which masquerades the pods, is missing",
                    masq::TABLE
                ))
            })?;
            if table.rules < 2 {
                return Err(failed(format!(
                    "the masquerade rules of table inet {} are missing",
                    masq::TABLE
                )));
            }
            for ip in &ours {
                let subnet = ip.address.trunc();
                if !table.masquerades(&subnet) || !table.reaches_directly(&subnet) {
                    return Err(failed(format!(
                        "masquerading of {subnet} is missing from table inet {}",
                        masq::TABLE
                    )));
                }
            }
            for cidr in &conf.non_masquerade_cidrs {
                if !table.reaches_directly(cidr) {
                    return Err(failed(format!(
                        "nonMasqueradeCIDRs {cidr} is missing from table inet {}",
                        masq::TABLE
                    )));
                }
            }
        }
        Ok(())
    }

    /// STATUS: whether an ADD would succeed now.
    fn status(&self) -> Result<()> {
        let conf = self.conf;
        let unavailable = |err: CniError| CniError::new(Code::NotAvailable, err.details);
        match &conf.ipam {
            Ipam::None => {}
            Ipam::Builtin(ipam) => {
                let store =
                    Store::open(&ipam.data_dir, &conf.name, ipam.lock_wait).map_err(unavailable)?;
                if let Some(why) = ipam::first_exhausted(&store, ipam)? {
                    return Err(CniError::new(Code::NotAvailable, why));
                }
                let pods = store.entries()?.len();
                let mut host = Netlink::open().map_err(net_error("opening netlink"))?;
                if pods > 0
                    && host
                        .link(&conf.bridge)
                        .map_err(net_error("looking up the bridge"))?
                        .is_none()
                {
                    return Err(CniError::new(
                        Code::NotAvailableLimitedConnectivity,
                        format!(
                            "bridge {} is gone while {pods} addresses are allocated",
                            conf.bridge
                        ),
                    ));
                }
            }
            Ipam::Delegate(kind) => {
                self.delegate(kind, Command::Status)?;
            }
        }
        if conf.ip_masq {
            let nft = std::process::Command::new("nft").arg("--version").output();
            if !nft.is_ok_and(|out| out.status.success()) {
                return Err(CniError::new(
                    Code::NotAvailable,
                    "ipMasq needs nft (nftables), which cannot be run",
                ));
            }
        }
        Ok(())
    }

    /// GC: releases the addresses of every attachment not in `cni.dev/valid-attachments`.
    fn gc(&self) -> Result<()> {
        let conf = self.conf;
        let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
            invalid_config("GC needs cni.dev/valid-attachments; without it every address would go")
        })?;
        match &conf.ipam {
            Ipam::None => Ok(()),
            Ipam::Builtin(ipam) => {
                let store = Store::open(&ipam.data_dir, &conf.name, ipam.lock_wait)?;
                // Each stale record is removed on its own; one that cannot be does not keep the
                // others (SPEC.md: GC removes as much as it can and reports the errors).
                let mut released = Vec::new();
                let mut errors = Vec::new();
                for entry in store.entries()? {
                    let keep = valid.iter().any(|a| {
                        a.container_id == entry.container_id
                            && (a.ifname == entry.ifname || entry.ifname.is_empty())
                    });
                    if keep {
                        continue;
                    }
                    match store.remove(entry.ip) {
                        Ok(()) => released.push(entry.ip.to_string()),
                        Err(err) => errors.push(err.details),
                    }
                }
                if !released.is_empty() {
                    self.log
                        .line(format_args!("GC released {}", released.join(", ")));
                }
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(CniError::new(Code::System, errors.join("; ")))
                }
            }
            Ipam::Delegate(kind) => self.delegate(kind, Command::Gc).map(drop),
        }
    }

    /// Runs the IPAM plugin `kind` from `CNI_PATH` with this invocation's environment and
    /// configuration (SPEC.md section 4); its stderr goes to ours. Its error object is passed
    /// on with its own code.
    fn delegate(&self, kind: &str, command: Command) -> Result<Option<Value>> {
        let found = self
            .invocation
            .path
            .iter()
            .map(|dir| Path::new(dir).join(kind))
            .find(|path| path.is_file())
            .ok_or_else(|| {
                CniError::new(
                    Code::Delegate,
                    format!(
                        "IPAM plugin {kind:?} is not in CNI_PATH ({})",
                        self.invocation.path.join(":")
                    ),
                )
            })?;
        let mut delegate = std::process::Command::new(&found);
        delegate
            .env("CNI_COMMAND", command.as_str())
            .stderr(Stdio::inherit());
        let output = crate::run_with_input(&mut delegate, self.stdin).map_err(|err| {
            CniError::new(
                Code::Delegate,
                format!("running {}: {err}", found.display()),
            )
        })?;
        let answer: Option<Value> = serde_json::from_slice(&output.stdout).ok();
        if output.status.success() {
            return Ok(answer);
        }
        let error = answer.as_ref().and_then(|value| {
            let code = u32::try_from(value.get("code")?.as_u64()?).ok()?;
            let msg = value.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = value
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Some(CniError {
                code: Code::Other(code),
                msg: msg.to_string(),
                details: format!(
                    "{kind} {}: {}",
                    command.as_str(),
                    if details.is_empty() { msg } else { details }
                ),
            })
        });
        Err(error.unwrap_or_else(|| {
            CniError::new(
                Code::Delegate,
                format!(
                    "{kind} {} failed ({}): {}",
                    command.as_str(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout).trim()
                ),
            )
        }))
    }
}

fn delete_link_named(host: &mut Netlink, name: &str) -> Result<()> {
    if let Some(link) = host
        .link(name)
        .map_err(net_error(format_args!("looking up {name}")))?
    {
        host.delete_link(link.index)
            .map_err(net_error(format_args!("deleting {name}")))?;
    }
    Ok(())
}

/// The gateway of the first address of `dst`'s family.
fn family_gateway(ips: &[IpConfig], dst: IpAddr) -> Option<IpAddr> {
    ips.iter()
        .filter(|ip| ip.address.addr().is_ipv4() == dst.is_ipv4())
        .find_map(|ip| ip.gateway)
}

/// Turns on forwarding for the gateway's family in this namespace (the node's).
fn enable_forwarding(gateway: IpAddr) -> Result<()> {
    let path = if gateway.is_ipv4() {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(path, "1").map_err(|err| system(format_args!("turning on forwarding ({path})"), err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_the_kernel_and_differ_per_attachment() {
        let a = host_veth_name("pods", "c1", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth_name("pods", "c1", "eth0"));
        assert_ne!(a, host_veth_name("pods", "c1", "eth1"));
        assert_ne!(a, host_veth_name("other", "c1", "eth0"));
    }
}
