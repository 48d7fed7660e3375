//! The built-in allocator: addresses from range sets, kept in a small on-disk store under a lock.
//!
//! The store has the reference `host-local` plugin's layout, so a node can switch between the two
//! without losing track of an address:
//!
//! ```text
//! <dataDir>/<network>/10.22.0.5            "<containerID>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.0   the address last handed out from range set 0
//! ```
//!
//! Every operation holds an exclusive `flock` on `<dataDir>/<network>/lock`, the file
//! `host-local` locks, so concurrent ADDs on a node (of this plugin or of `host-local`) never
//! hand out one address twice; the file for an address is created with `O_EXCL` as a second
//! guard. Allocation continues after the last address handed
//! out, so a released address is not reused at once.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::config::{IpamConfig, Range, from_u128, to_u128};
use crate::protocol::{CniError, Code, IpConfig, Result, system};

const LAST_RESERVED: &str = "last_reserved_ip.";

/// One allocation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// A network's allocation directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating it if needed) the directory `<data_dir>/<network>` and locks its `lock`
    /// file.
    pub fn open(data_dir: &Path, network: &str, wait: Duration) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)
            .map_err(|err| system(format_args!("creating {}", dir.display()), err))?;
        let lock_path = dir.join("lock");
        let mut handle = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|err| system(format_args!("opening {}", lock_path.display()), err))?;
        let deadline = Instant::now() + wait;
        loop {
            match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Store { dir, _lock: lock }),
                Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    handle = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(CniError::new(
                        Code::TryAgainLater,
                        format!(
                            "the allocation store {} stayed locked by another process for {:?}",
                            dir.display(),
                            wait
                        ),
                    ));
                }
                Err((_, errno)) => {
                    return Err(system(format_args!("locking {}", dir.display()), errno));
                }
            }
        }
    }

    /// Every allocation record. Files that are not addresses (the lock, the last-reserved
    /// markers) are not records.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let listing = fs::read_dir(&self.dir)
            .map_err(|err| system(format_args!("reading {}", self.dir.display()), err))?;
        let mut entries = Vec::new();
        for item in listing {
            let item =
                item.map_err(|err| system(format_args!("reading {}", self.dir.display()), err))?;
            let Some(ip) = item
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<IpAddr>().ok())
            else {
                continue;
            };
            // A record removed between listing and reading is simply gone.
            let Ok(content) = fs::read_to_string(item.path()) else {
                continue;
            };
            let mut lines = content.trim().split("\r\n");
            let container_id = lines.next().unwrap_or_default().trim().to_string();
            // Records written by old host-local versions hold the container ID alone.
            let ifname = lines.next().unwrap_or_default().trim().to_string();
            entries.push(Entry {
                ip,
                container_id,
                ifname,
            });
        }
        entries.sort_by_key(|entry| to_u128(entry.ip));
        Ok(entries)
    }

    fn record_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Claims `ip` for the attachment; false when its record already exists.
    fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str, set: usize) -> Result<bool> {
        let path = self.record_path(ip);
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(err) => return Err(system(format_args!("creating {}", path.display()), err)),
        };
        let written = file
            .write_all(format!("{container_id}\r\n{ifname}").as_bytes())
            .and_then(|()| file.sync_data());
        if let Err(err) = written {
            let _ = fs::remove_file(&path);
            return Err(system(format_args!("writing {}", path.display()), err));
        }
        let marker = self.dir.join(format!("{LAST_RESERVED}{set}"));
        fs::write(&marker, ip.to_string())
            .map_err(|err| system(format_args!("writing {}", marker.display()), err))?;
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the record of `ip`; one already gone is success.
    pub fn remove(&self, ip: IpAddr) -> Result<()> {
        let path = self.record_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(system(format_args!("removing {}", path.display()), err)),
        }
    }

    /// Releases every address of the attachment; returns them. Nothing to release is success.
    /// Records of old `host-local` versions (a container ID and no interface name) are released
    /// only when no record names the interface, as `host-local` does.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let entries = self.entries()?;
        let exact: Vec<IpAddr> = entries
            .iter()
            .filter(|e| e.container_id == container_id && e.ifname == ifname)
            .map(|e| e.ip)
            .collect();
        let released = if exact.is_empty() {
            entries
                .iter()
                .filter(|e| e.container_id == container_id && e.ifname.is_empty())
                .map(|e| e.ip)
                .collect()
        } else {
            exact
        };
        for ip in &released {
            self.remove(*ip)?;
        }
        Ok(released)
    }
}

/// Allocates one address from every range set to the attachment, or nothing: an exhausted set
/// releases what the others gave. A second allocation for the same attachment is an error.
pub fn allocate(
    store: &Store,
    config: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    let entries = store.entries()?;
    if let Some(held) = entries
        .iter()
        .find(|e| e.container_id == container_id && e.ifname == ifname)
    {
        return Err(CniError::new(
            Code::AlreadyExists,
            format!(
                "{} is already allocated to container {container_id} interface {ifname}; \
                 DEL the attachment before adding it again",
                held.ip
            ),
        ));
    }
    let mut used: HashSet<IpAddr> = entries.iter().map(|e| e.ip).collect();
    let mut given: Vec<IpConfig> = Vec::new();
    for (index, set) in config.range_sets.iter().enumerate() {
        let found = loop {
            let Some((ip, range)) = find_free(set, &used, store.last_reserved(index)) else {
                break None;
            };
            used.insert(ip);
            // A record can appear without the lock only if another program ignores it; then
            // the address is taken and the search goes on.
            if store.reserve(ip, container_id, ifname, index)? {
                break Some((ip, range));
            }
        };
        let Some((ip, range)) = found else {
            for ip in &given {
                store.remove(ip.address.addr())?;
            }
            return Err(CniError::new(Code::PoolExhausted, exhausted(index, set)));
        };
        given.push(IpConfig {
            address: IpNet::new(ip, range.subnet.prefix_len())
                .map_err(|err| system("building an address", err))?,
            gateway: Some(range.gateway),
            interface: None,
            extra: Default::default(),
        });
    }
    Ok(given)
}

/// Why a set has nothing left, for ADD's error and STATUS.
pub fn exhausted(index: usize, set: &[Range]) -> String {
    let ranges: Vec<String> = set
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect();
    format!(
        "no free address in range set {index} ({})",
        ranges.join(", ")
    )
}

/// Whether ADD would find an address in every set; the first exhausted set otherwise.
pub fn first_exhausted(store: &Store, config: &IpamConfig) -> Result<Option<String>> {
    let used: HashSet<IpAddr> = store.entries()?.into_iter().map(|e| e.ip).collect();
    Ok(config
        .range_sets
        .iter()
        .enumerate()
        .find_map(|(index, set)| {
            find_free(set, &used, store.last_reserved(index))
                .is_none()
                .then(|| exhausted(index, set))
        }))
}

/// The next free address of `set` after `last` (or from the start), going round the set once.
/// Network, IPv4 broadcast and gateway addresses are never handed out.
fn find_free<'a>(
    set: &'a [Range],
    used: &HashSet<IpAddr>,
    last: Option<IpAddr>,
) -> Option<(IpAddr, &'a Range)> {
    let sizes: Vec<u128> = set
        .iter()
        .map(|r| (to_u128(r.end) - to_u128(r.start)).saturating_add(1))
        .collect();
    let total = sizes
        .iter()
        .fold(0u128, |sum, size| sum.saturating_add(*size));
    // Start just after the last address handed out, when it is still in the set.
    let (mut range, mut offset) = last
        .and_then(|last| {
            set.iter().enumerate().find_map(|(i, r)| {
                let n = to_u128(last);
                (r.start.is_ipv4() == last.is_ipv4()
                    && to_u128(r.start) <= n
                    && n <= to_u128(r.end))
                .then(|| (i, n - to_u128(r.start)))
            })
        })
        .map_or((0, None), |(i, offset)| (i, Some(offset)));
    // Every candidate that is not free is either used or one of the three skipped addresses of
    // its range; looking at that many plus one distinct candidates finds a free one if any.
    let bound = total.min((used.len() as u128) + 3 * (set.len() as u128) + 1);
    let mut seen = 0u128;
    loop {
        // Advance to the next candidate.
        let next = match offset {
            None => 0,
            Some(o) if o + 1 < sizes[range] => o + 1,
            Some(_) => {
                range = (range + 1) % set.len();
                0
            }
        };
        offset = Some(next);
        if seen >= bound {
            return None;
        }
        seen += 1;
        let r = &set[range];
        let ip = from_u128(to_u128(r.start) + next, r.start);
        let skipped = ip == r.gateway
            || ip == r.subnet.network()
            || (ip.is_ipv4() && ip == r.subnet.broadcast());
        if !skipped && !used.contains(&ip) {
            return Some((ip, r));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{Ipam, NetConf};

    fn ipam(ranges: serde_json::Value, dir: &Path) -> IpamConfig {
        let conf = NetConf::from_json(&json!({
            "cniVersion": "1.1.0", "name": "pods",
            "ipam": {"ranges": ranges, "dataDir": dir}
        }));
        match conf.map(|c| c.ipam) {
            Ok(Ipam::Builtin(ipam)) => ipam,
            other => panic!("{other:?}"),
        }
    }

    fn addresses(given: &[IpConfig]) -> Vec<String> {
        given.iter().map(|ip| ip.address.to_string()).collect()
    }

    #[test]
    fn hands_out_each_address_once_skipping_gateway_and_wraps_round() {
        let dir = tempfile::tempdir().unwrap();
        // A /29: .0 network, .1 gateway, .7 broadcast; .2 to .6 to hand out.
        let config = ipam(json!([[{"subnet": "10.1.0.0/29"}]]), dir.path());
        let store = Store::open(dir.path(), "pods", Duration::from_secs(1)).unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.extend(addresses(
                &allocate(&store, &config, &format!("c{i}"), "eth0").unwrap(),
            ));
        }
        assert_eq!(
            got,
            [
                "10.1.0.2/29",
                "10.1.0.3/29",
                "10.1.0.4/29",
                "10.1.0.5/29",
                "10.1.0.6/29"
            ]
        );
        let err = allocate(&store, &config, "c5", "eth0").unwrap_err();
        assert_eq!(err.code, Code::PoolExhausted);
        assert_eq!(
            err.details,
            "no free address in range set 0 (10.1.0.1-10.1.0.6)"
        );
        assert!(first_exhausted(&store, &config).unwrap().is_some());
        // Released addresses come back, after the last one handed out.
        assert_eq!(store.release("c1", "eth0").unwrap().len(), 1);
        assert_eq!(
            addresses(&allocate(&store, &config, "c6", "eth0").unwrap()),
            ["10.1.0.3/29"]
        );
        assert!(store.release("nobody", "eth0").unwrap().is_empty());
    }

    #[test]
    fn one_address_per_set_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let config = ipam(
            json!([[{"subnet": "10.1.0.0/30"}], [{"subnet": "fd00:1::/64"}]]),
            dir.path(),
        );
        let store = Store::open(dir.path(), "pods", Duration::from_secs(1)).unwrap();
        let first = allocate(&store, &config, "a", "eth0").unwrap();
        assert_eq!(addresses(&first), ["10.1.0.2/30", "fd00:1::2/64"]);
        // The v4 set is now empty: the v6 address is not kept either.
        assert_eq!(
            allocate(&store, &config, "b", "eth0").unwrap_err().code,
            Code::PoolExhausted
        );
        assert_eq!(store.entries().unwrap().len(), 2);
        let again = allocate(&store, &config, "a", "eth0").unwrap_err();
        assert_eq!(again.code, Code::AlreadyExists);
    }

    #[test]
    fn records_without_an_interface_are_released_only_when_none_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = ipam(json!([[{"subnet": "10.1.0.0/24"}]]), dir.path());
        let store = Store::open(dir.path(), "pods", Duration::from_secs(1)).unwrap();
        allocate(&store, &config, "a", "eth0").unwrap();
        // What an old host-local wrote: the container ID alone.
        fs::write(dir.path().join("pods/10.1.0.9"), "a").unwrap();
        assert_eq!(
            store.release("a", "eth0").unwrap(),
            ["10.1.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            store.release("a", "eth0").unwrap(),
            ["10.1.0.9".parse::<IpAddr>().unwrap()]
        );
        assert!(store.entries().unwrap().is_empty());
    }

    #[test]
    fn state_survives_reopening_in_host_local_layout() {
        let dir = tempfile::tempdir().unwrap();
        let config = ipam(json!([[{"subnet": "10.1.0.0/24"}]]), dir.path());
        {
            let store = Store::open(dir.path(), "pods", Duration::from_secs(1)).unwrap();
            allocate(&store, &config, "a", "eth0").unwrap();
        }
        let record = fs::read_to_string(dir.path().join("pods/10.1.0.2")).unwrap();
        assert_eq!(record, "a\r\neth0");
        let store = Store::open(dir.path(), "pods", Duration::from_secs(1)).unwrap();
        assert_eq!(
            addresses(&allocate(&store, &config, "b", "eth0").unwrap()),
            ["10.1.0.3/24"]
        );
    }
}
