//! A small blocking rtnetlink client: the handful of link, address and route requests the
//! plugin makes. Messages are built and parsed by `netlink-packet-route`; this module only
//! sends a request and reads until its acknowledgement (or the end of a dump).
//!
//! A socket belongs to the network namespace it was opened in, so the plugin opens one in the
//! node's namespace and one inside the pod's (see `netns::run_in`) and uses each from the node.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

/// A link as the plugin needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub up: bool,
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
}

/// A route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A netlink socket of one network namespace.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks put the kernel's reason in errors; not every kernel has them.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects what the kernel answers up to its ack or dump end.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        let mut interrupted = false;
        loop {
            let mut filled = &mut self.buffer[..];
            let size = self.socket.recv(&mut filled, 0)?;
            let mut offset = 0;
            while offset < size {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..size])
                        .map_err(|err| {
                            io::Error::new(io::ErrorKind::InvalidData, err.to_string())
                        })?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                if reply.header.flags & NLM_F_DUMP_INTR == NLM_F_DUMP_INTR {
                    interrupted = true;
                }
                match reply.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(answers),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        return Err(io::Error::from_raw_os_error(-done.code));
                    }
                    // A dump that changed under it is inconsistent: the caller asks again.
                    NetlinkPayload::Done(_) if interrupted => {
                        return Err(io::Error::from(io::ErrorKind::Interrupted));
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(message), NLM_F_ACK) {
            Ok(answers) => Ok(answers.into_iter().find_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(link) => Some(to_link(link)),
                _ => None,
            })),
            Err(err) if err.raw_os_error() == Some(Errno::ENODEV as i32) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Creates a bridge, up, with `mtu` when given.
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.create(RouteNetlinkMessage::NewLink(message))
    }

    /// Pins a bridge's MAC address to its current one: otherwise a bridge takes the lowest MAC
    /// of its ports, and it changes as pods come and go.
    pub fn pin_mac(&mut self, index: u32, mac: &[u8]) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        self.ack(RouteNetlinkMessage::SetLink(message))
    }

    /// Creates a veth pair: `host` here, `peer` created directly inside the namespace open at
    /// `peer_netns`. Both get `mtu` when given.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut peer_message = LinkMessage::default();
        peer_message
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_message
            .attributes
            .push(LinkAttribute::NetNsFd(peer_netns));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(host.to_string()));
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
            peer_message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ]));
        self.create(RouteNetlinkMessage::NewLink(message))
    }

    /// Sets a link up, under `controller` (a bridge) when given.
    pub fn set_up(&mut self, index: u32, controller: Option<u32>) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(controller) = controller {
            message
                .attributes
                .push(LinkAttribute::Controller(controller));
        }
        self.ack(RouteNetlinkMessage::SetLink(message))
    }

    /// Turns hairpin mode on for a bridge port, so a pod can reach itself through the bridge
    /// (through its own Service address, say).
    pub fn set_hairpin(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        // Port data is applied by RTM_NEWLINK on an existing link, not by RTM_SETLINK.
        self.ack(RouteNetlinkMessage::NewLink(message))
    }

    /// Deletes a link; false when there was none.
    pub fn delete_link(&mut self, index: u32) -> io::Result<bool> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.ack(RouteNetlinkMessage::DelLink(message)) {
            Ok(()) => Ok(true),
            Err(err) if err.raw_os_error() == Some(Errno::ENODEV as i32) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Adds an address; IPv6 ones skip duplicate address detection, so they work at once.
    /// An address that is already there is not an error.
    pub fn add_address(&mut self, index: u32, net: IpNet) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.header.prefix_len = net.prefix_len();
        match net.addr() {
            IpAddr::V4(_) => {
                message.header.family = AddressFamily::Inet;
                message.attributes.push(AddressAttribute::Local(net.addr()));
            }
            IpAddr::V6(_) => {
                message.header.family = AddressFamily::Inet6;
                message.header.flags = AddressHeaderFlags::Nodad;
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        message
            .attributes
            .push(AddressAttribute::Address(net.addr()));
        match self.create(RouteNetlinkMessage::NewAddress(message)) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    /// The addresses of every link.
    pub fn addresses(&mut self) -> io::Result<Vec<Address>> {
        let answers = self.dump(&RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(address) => {
                    let ip = address
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })?;
                    let net = IpNet::new(ip, address.header.prefix_len).ok()?;
                    Some(Address {
                        index: address.header.index,
                        net,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds a route in the main table; one that is already there is not an error.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header = RouteHeader {
            address_family: if dst.addr().is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            destination_prefix_length: dst.prefix_len(),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: if gw.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        if dst.prefix_len() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        match self.create(RouteNetlinkMessage::NewRoute(message)) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    /// The routes of the main table, both families.
    pub fn routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            let answers = self.dump(&RouteNetlinkMessage::GetRoute(message))?;
            for answer in answers {
                let RouteNetlinkMessage::NewRoute(route) = answer else {
                    continue;
                };
                if route.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let mut dst = None;
                let mut gw = None;
                let mut oif = None;
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Destination(address) => dst = to_ip(address),
                        RouteAttribute::Gateway(address) => gw = to_ip(address),
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        _ => {}
                    }
                }
                let unspecified: IpAddr = match family {
                    AddressFamily::Inet => [0u8; 4].into(),
                    _ => [0u8; 16].into(),
                };
                let dst = IpNet::new(
                    dst.unwrap_or(unspecified),
                    route.header.destination_prefix_length,
                );
                if let Ok(dst) = dst {
                    routes.push(RouteEntry { dst, gw, oif });
                }
            }
        }
        Ok(routes)
    }

    /// A dump, asked again (a few times) when the kernel says it changed while being read.
    fn dump(&mut self, message: &RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut tries = 0;
        loop {
            match self.request(message.clone(), NLM_F_DUMP) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted && tries < 5 => tries += 1,
                other => return other,
            }
        }
    }

    fn create(&mut self, message: RouteNetlinkMessage) -> io::Result<()> {
        self.request(message, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    fn ack(&mut self, message: RouteNetlinkMessage) -> io::Result<()> {
        self.request(message, NLM_F_ACK).map(drop)
    }
}

fn to_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn to_link(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: None,
        kind: None,
        controller: None,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(mac) => link.mac = format_mac(&mac),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
            LinkAttribute::Controller(index) => link.controller = Some(index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// `0a:58:0a:16:00:05`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `0a:58:0a:16:00:05` back to bytes.
pub fn parse_mac(text: &str) -> Option<Vec<u8>> {
    text.split(':')
        .map(|part| u8::from_str_radix(part, 16).ok())
        .collect()
}
