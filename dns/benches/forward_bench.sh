#!/usr/bin/env bash
# Forwarding cache, side by side: clusterdns, dnsmasq and Unbound each forward to the same NSD
# upstream on loopback and answer the same names from their caches.
#
#   apt-get install -y nsd dnsmasq unbound dnsperf
#   cargo build --release
#   dns/benches/forward_bench.sh            # NAMES=1000 SECS=8 RATE=30000
#
# Each server is warmed with every name once, then dnsperf runs at full speed (queries/s,
# bounded by the client on 2 cores) and at a fixed rate, where the server's own CPU time
# (user+sys from /proc) per answered query is the figure to compare. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
names=${NAMES:-1000} secs=${SECS:-8} rate=${RATE:-30000}
p_up=${PORT_UP:-15360} p_ours=${PORT_OURS:-15361} p_dnsmasq=${PORT_DNSMASQ:-15362} p_unbound=${PORT_UNBOUND:-15363}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The upstream: NSD, authoritative for example. with NAMES records (TTL 1 day, so nothing expires).
{
  echo '$ORIGIN example.'; echo '$TTL 86400'
  echo '@ IN SOA ns hostmaster 1 7200 1800 86400 60'; echo '@ IN NS ns'; echo 'ns IN A 192.0.2.1'
  for i in $(seq 1 "$names"); do echo "host$i IN A 192.0.2.$((i % 250 + 1))"; done
} >"$work/example.zone"
for i in $(seq 1 "$names"); do echo "host$i.example. A"; done >"$work/queries.txt"
cat >"$work/nsd.conf" <<CONF
server:
    ip-address: 127.0.0.1@$p_up
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$work"
    database: ""
    pidfile: "$work/nsd.pid"
    xfrdfile: "$work/xfrd.state"
    zonelistfile: "$work/zone.list"
    logfile: "$work/nsd.log"
    rrl-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: example.
    zonefile: $work/example.zone
CONF
nsd -d -c "$work/nsd.conf" & pids+=($!)

mkdir -p "$work/empty"
target/release/clusterdns serve --manifests "$work/empty" --listen "127.0.0.1:$p_ours" --admin-listen off \
  --upstream "127.0.0.1:$p_up" --udp-workers 1 2>"$work/ours.log" & pids+=($!); ours=$!
dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 \
  --port="$p_dnsmasq" --server="127.0.0.1#$p_up" --cache-size=10000 --user=root --pid-file="$work/dnsmasq.pid" \
  --log-facility=/dev/null & pids+=($!); dnsmasq_pid=$!
cat >"$work/unbound.conf" <<CONF
server:
    interface: 127.0.0.1@$p_unbound
    num-threads: 1
    username: ""
    chroot: ""
    directory: "$work"
    pidfile: "$work/unbound.pid"
    do-not-query-localhost: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    msg-cache-size: 16m
    rrset-cache-size: 32m
    prefetch: no
    module-config: "iterator"
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$p_up
CONF
unbound -d -c "$work/unbound.conf" & pids+=($!); unbound_pid=$!

wait_up() { for _ in $(seq 100); do dig +short +time=1 +tries=1 @127.0.0.1 -p "$1" host1.example >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }
for p in $p_up $p_ours $p_dnsmasq $p_unbound; do wait_up "$p"; done

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
hz=$(getconf CLK_TCK)
printf '%-10s %10s %14s %8s\n' server max_qps cpu_us/query lost
declare -A cpu
for s in ours dnsmasq unbound; do
  case $s in ours) port=$p_ours pid=$ours;; dnsmasq) port=$p_dnsmasq pid=$dnsmasq_pid;; unbound) port=$p_unbound pid=$unbound_pid;; esac
  dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -n 1 -c 4 -T 1 >/dev/null 2>&1   # warm the cache
  qps=$(dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l "$secs" -c 4 -T 1 2>&1 | awk '/Queries per second/{printf "%.0f", $4}')
  t0=$(ticks "$pid")
  out=$(dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l "$secs" -c 4 -T 1 -Q "$rate" 2>&1)
  t1=$(ticks "$pid")
  done_q=$(awk '/Queries completed/{print $3}' <<<"$out")
  lost=$(awk '/Queries lost/{print $4}' <<<"$out" | tr -d '()')
  us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$done_q" 'BEGIN{printf "%.2f", t / hz * 1e6 / n}')
  cpu[$s]=$us
  printf '%-10s %10s %14s %8s\n' "$s" "$qps" "$us" "$lost"
done
for peer in dnsmasq unbound; do
  awk -v a="${cpu[ours]}" -v b="${cpu[$peer]}" -v p="$peer" 'BEGIN{printf "ratio cached names vs %s: cpu/query %.2fx (lower is better)\n", p, a / b}'
done
