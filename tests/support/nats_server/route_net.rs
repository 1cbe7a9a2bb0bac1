//! The 3-node cluster with every route through a test-controlled proxy
//! ([`NatsCluster::start_with_route_proxies`]), so a test can cut, hold or slow the link between
//! any two servers — and a client's connection to its server ([`RouteNet::client_proxy`]).
//!
//! # Topology
//! Six proxies, one per ordered pair: `n1->n2` is where n1 dials n2, forwarding to n2's real
//! route port. Each node's `routes` names only its two outgoing proxies (never a real route
//! port, never itself). Both nodes of a pair dial, as in an ordinary full-mesh configuration,
//! and the server keeps one connection per pool slot whichever side dialed it, so the traffic of
//! a pair runs through both of its proxies: a [`Link`] controls the two together.
//!
//! # Why nothing bypasses the proxies (nats-server source, `server/`, main at 1787eee0 — the
//! functions below are identical in `release/v2.14.5`; `/routez` confirms it on 2.15.1)
//! - Explicit routes: `solicitRoutes` (route.go:3001) dials each configured route URL, once for
//!   the pool and once more per pinned account; the rest of the pool is dialed to the same URL
//!   after the first PONG (`addRoute`, route.go:2403-2414). Pooling is on by default with 3
//!   connections (`DEFAULT_ROUTE_POOL_SIZE`, const.go:159; opts.go:6039) and the system account
//!   is pinned by default (opts.go:6045-6058): 4 connections per pair, all to the URL we gave.
//! - Implicit routes (gossip): when a server registers a route it forwards the new peer's INFO
//!   to its other routes (`forwardNewRouteInfoToKnownServers`, route.go:1136), and a receiver
//!   not yet connected to that server id dials `info.IP` (`processImplicitRoute`,
//!   route.go:1040-1083) unless `info.Host:info.Port` is one of its configured routes
//!   (`hasThisRouteConfigured`, route.go:1101). Without `cluster.advertise`, `info.IP` is the
//!   peer's TCP address with its *real* route port (`processRouteInfo`, route.go:850-860): a
//!   server that hears of a peer before its own proxied dial succeeds would connect straight
//!   to the peer's route port, past the proxy. With `advertise` set, `info.Host/Port/IP` are the
//!   advertised address (`setRouteInfoHostPortAndIP`, route.go:2827-2842). So each node
//!   advertises a [`ClosedPort`]: a loopback port bound but never listening, where a dial is
//!   refused at once; an implicit route gets no retry when `connect_retries` is 0, the default
//!   (`connectToRoute`, route.go:2946-2948), and no route is ever made that way. (Advertising a
//!   port that accepts and closes would loop: a solicited implicit route that closes is dialed
//!   again, `reconnect`, client.go:6345-6404.) The log shows those refused dials as
//!   "Error trying to connect to route"; [`RouteNet::refused_implicit_dials`] counts them.
//! - An accepted connection that the server later treats as solicited takes the URL of the
//!   solicited one (`upgradeRouteToSolicited`, route.go:2455): reconnects go to a proxy too.
//! - `no_advertise: true` keeps each server from telling clients the other servers' client URLs
//!   (route.go:726, 2388, 2759), so a client given one server (or one client proxy) reconnects
//!   only there, never around a cut.
//!
//! `/routez` reports each route's remote TCP address (`Routez`, monitor.go:902-907): for a
//! connection node X dialed, the listening port of proxy `X->Y`; for one Y dialed, the local
//! port proxy `Y->X` used to reach X. [`RouteNet::check_routes`] accepts nothing else.
//!
//! Measured on 2.15.1: with these proxies but without `advertise`, 4 of 5 starts had an implicit
//! route (`is_configured: false`) on a real route port or from a server's own port, which
//! `check_routes` reported; with it, none of 14 starts had one, and every start logged one or
//! two implicit dials refused at a closed port — the bypass the design closes.
//!
//! # One-way faults
//! A route connection carries both directions of a pair's traffic (each side sends its
//! messages, PINGs and PONGs on it), so a one-way fault is one direction of both proxies of the
//! link held ([`Link::hold_one_way`]): what `a` sends stops arriving at `b` while `b`'s traffic
//! still reaches `a`. `a` notices nothing at the TCP level (the proxy keeps reading, until its
//! bounded buffer fills); `b` hears no raft heartbeats and no PONGs from `a`, and closes the
//! route after its PINGs go unanswered (route ping interval at most 30 s, route.go:140; 2 pings
//! out, const.go:123); the re-dials then stall in the handshake, since their INFO/CONNECT from
//! `a` never arrive either (read in the source, not measured: the tests hold one way for under
//! 2 s, and see the follower whose sends are held keep up, the one whose leader's sends are held
//! stall, and the route connections survive both). A one-way *cut* (closing one direction) is
//! not a thing TCP has: a half-closed route is a closed route to nats-server.
//!
//! Timing facts a partition test relies on (raft.go:302-323): election timeout 4-9 s; a leader
//! that has heard from no quorum for 10 s steps down (checked every 10 s).
#![allow(clippy::disallowed_methods)] // waits in real time

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::route_proxy::{ClosedPort, Direction, Proxy, ProxyRuntime};
use super::{ClusterPorts, NatsCluster, NatsServer, unused_ports};

impl NatsCluster {
    /// Starts the 3-node cluster with every route through its own proxy (see the module
    /// documentation) and waits until every node is healthy. The proxies are reached through
    /// [`NatsCluster::route_net`].
    pub fn start_with_route_proxies() -> Self {
        Self::start_retrying(|| {
            let net = RouteNet::new(3);
            let blocks = net.cluster_blocks();
            Self::launch(blocks, Some(net), Duration::from_secs(30))
        })
    }

    /// The route proxies. Panics when the cluster was started without them.
    pub fn route_net(&self) -> &RouteNet {
        self.route_net
            .as_ref()
            .expect("the cluster was started with NatsCluster::start_with_route_proxies")
    }
}

/// Index of node `n<k>`.
fn index(node: &str) -> usize {
    node.strip_prefix('n')
        .and_then(|k| k.parse::<usize>().ok())
        .and_then(|k| k.checked_sub(1))
        .unwrap_or_else(|| panic!("no node {node}"))
}

/// The route proxies of a cluster.
pub struct RouteNet {
    /// `proxies[from][to]`: node `from` dials node `to` through it (`None` when `from == to`).
    proxies: Vec<Vec<Option<Proxy>>>,
    /// What each node advertises as its route address: refuses every connection.
    advertised: Vec<ClosedPort>,
    /// Each node's real route listen port.
    route_ports: Vec<u16>,
    /// Dropped last, after the proxies.
    runtime: ProxyRuntime,
}

impl RouteNet {
    fn new(nodes: usize) -> Self {
        let runtime = ProxyRuntime::new("routes");
        let route_ports = unused_ports(nodes);
        let proxies = (0..nodes)
            .map(|from| {
                (0..nodes)
                    .map(|to| {
                        (from != to).then(|| {
                            Proxy::start(
                                runtime.handle(),
                                format!("n{}->n{}", from + 1, to + 1),
                                SocketAddr::from(([127, 0, 0, 1], route_ports[to])),
                            )
                        })
                    })
                    .collect()
            })
            .collect();
        let advertised = (0..nodes).map(|_| ClosedPort::new()).collect();
        Self {
            proxies,
            advertised,
            route_ports,
            runtime,
        }
    }

    /// Each node's cluster block: listen on the real port, dial peers through the proxies,
    /// advertise the closed port, tell clients nothing.
    fn cluster_blocks(&self) -> Vec<ClusterPorts> {
        (0..self.route_ports.len())
            .map(|i| ClusterPorts {
                listen: self.route_ports[i],
                routes: self.proxies[i]
                    .iter()
                    .flatten()
                    .map(|p| p.addr().port())
                    .collect(),
                extra: format!(
                    "  advertise: \"{}\"\n  no_advertise: true\n  connect_retries: 0\n",
                    self.advertised[i].addr()
                ),
            })
            .collect()
    }

    /// The proxy through which `from` dials `to`.
    pub fn proxy(&self, from: &str, to: &str) -> &Proxy {
        self.proxies[index(from)][index(to)]
            .as_ref()
            .unwrap_or_else(|| panic!("no route from {from} to itself"))
    }

    /// Every route proxy.
    pub fn proxies(&self) -> impl Iterator<Item = &Proxy> {
        self.proxies.iter().flatten().flatten()
    }

    /// The link between `a` and `b` (both proxies).
    pub fn link(&self, a: &str, b: &str) -> Link<'_> {
        Link {
            a_dials_b: self.proxy(a, b),
            b_dials_a: self.proxy(b, a),
        }
    }

    /// Cuts every link of `node`: it keeps its clients but hears from no other server.
    pub fn isolate(&self, node: &str) {
        for other in self.others(node) {
            self.link(node, &other).cut();
        }
    }

    /// Heals every link (what was held is delivered).
    pub fn heal_all(&self) {
        for proxy in self.proxies() {
            proxy.heal();
        }
    }

    /// The names of the nodes other than `node`.
    pub fn others(&self, node: &str) -> Vec<String> {
        let me = index(node);
        (0..self.route_ports.len())
            .filter(|&i| i != me)
            .map(|i| format!("n{}", i + 1))
            .collect()
    }

    /// A new proxy in front of `server`'s client port, on the same runtime as the routes; give a
    /// client `nats://<addr>` to be able to cut it off its server.
    pub fn client_proxy(&self, server: &NatsServer) -> Proxy {
        Proxy::start(
            self.runtime.handle(),
            format!("client->{}", server.name),
            SocketAddr::from(([127, 0, 0, 1], server.port)),
        )
    }

    /// Each node's real route listen port (what nothing but the proxies may connect to).
    pub fn route_ports(&self) -> &[u16] {
        &self.route_ports
    }

    /// How many implicit (gossiped) route dials each node made to an advertised closed port and
    /// had refused, from its log: each one would have been a route around the proxies.
    pub fn refused_implicit_dials(&self, nodes: &[NatsServer]) -> BTreeMap<String, usize> {
        nodes
            .iter()
            .map(|node| {
                let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
                let refused = log
                    .lines()
                    .filter(|line| line.contains("Error trying to connect to route"))
                    .filter(|line| {
                        self.advertised
                            .iter()
                            .any(|port| line.contains(&port.addr().to_string()))
                    })
                    .count();
                (node.name.clone(), refused)
            })
            .collect()
    }

    /// Reads `/routez` of every node and checks that each route's remote address is one of the
    /// two proxies of its pair: the listening port of `node->remote`, or a port `remote->node`
    /// dialed from. Returns, per node, how many route connections it has to each remote.
    pub fn check_routes(
        &self,
        nodes: &[NatsServer],
    ) -> Result<BTreeMap<String, BTreeMap<String, usize>>, String> {
        let mut seen = BTreeMap::new();
        for node in nodes {
            let Some((200, body)) = node.monitor("/routez") else {
                return Err(format!("{}: /routez does not answer", node.name));
            };
            let routez: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("/routez: {e}"))?;
            let mut per_remote: BTreeMap<String, usize> = BTreeMap::new();
            for route in routez["routes"].as_array().into_iter().flatten() {
                let remote = route["remote_name"].as_str().unwrap_or_default().to_owned();
                let ip = route["ip"].as_str().unwrap_or_default();
                let port = route["port"].as_u64().unwrap_or_default();
                let port = u16::try_from(port).map_err(|_| format!("bad port {port}"))?;
                if ip.is_empty() && port == 0 {
                    // A route whose socket is already closed and that the server is still
                    // removing: `Routez` takes the address from the live connection
                    // (`r.nc`, monitor.go), which closing clears. It carries nothing.
                    continue;
                }
                if self.route_ports.contains(&port) {
                    return Err(format!(
                        "{} has a route to {remote} on real route port {port}: {route}",
                        node.name
                    ));
                }
                if !self.others(&node.name).contains(&remote) {
                    return Err(format!("{} has a route to {remote:?}: {route}", node.name));
                }
                let dialed = self.proxy(&node.name, &remote).addr().port();
                let accepted = self.proxy(&remote, &node.name).outbound_ports();
                if ip != "127.0.0.1" || (port != dialed && !accepted.contains(&port)) {
                    return Err(format!(
                        "{}'s route to {remote} comes from {ip}:{port}, which is neither proxy \
                         {}->{remote} ({dialed}) nor a connection of proxy {remote}->{}: {route}",
                        node.name, node.name, node.name
                    ));
                }
                *per_remote.entry(remote).or_default() += 1;
            }
            seen.insert(node.name.clone(), per_remote);
        }
        Ok(seen)
    }

    /// Waits until every node has at least `per_pair` route connections to each other node,
    /// all through proxies; panics with the last finding otherwise.
    pub fn wait_full_mesh(&self, nodes: &[NatsServer], per_pair: usize, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let finding = self.check_routes(nodes);
            match &finding {
                Ok(seen)
                    if nodes.iter().all(|n| {
                        self.others(&n.name).iter().all(|o| {
                            seen.get(&n.name)
                                .and_then(|per| per.get(o))
                                .is_some_and(|&count| count >= per_pair)
                        })
                    }) =>
                {
                    return;
                }
                Err(bypass) => panic!("{bypass}"),
                Ok(_) => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no full mesh of {per_pair} routes per pair within {within:?}: {finding:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The two proxies between two servers `a` and `b`.
pub struct Link<'a> {
    a_dials_b: &'a Proxy,
    b_dials_a: &'a Proxy,
}

impl Link<'_> {
    fn both(&self) -> [&Proxy; 2] {
        [self.a_dials_b, self.b_dials_a]
    }

    /// Closes every route connection between the two, and every new one until healed.
    pub fn cut(&self) {
        self.both().iter().for_each(|p| p.cut());
    }

    /// Stops delivering both ways; buffered until [`Link::release`].
    pub fn hold(&self) {
        self.both().iter().for_each(|p| p.hold());
    }

    /// Delivers what was held, in order.
    pub fn release(&self) {
        self.both().iter().for_each(|p| p.release());
    }

    /// Delays every chunk both ways by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.both().iter().for_each(|p| p.set_delay(delay));
    }

    /// Stops delivering what `a` sends to `b` (see "One-way faults" in the module
    /// documentation); `b`'s traffic to `a` still flows.
    pub fn hold_one_way(&self) {
        self.a_dials_b.direction(Direction::Upstream).hold();
        self.b_dials_a.direction(Direction::Downstream).hold();
    }

    /// Back to plain forwarding both ways (what was held is delivered).
    pub fn heal(&self) {
        self.both().iter().for_each(|p| p.heal());
    }

    /// Bytes delivered over the link so far (both proxies, both directions).
    pub fn bytes(&self) -> u64 {
        self.both()
            .iter()
            .map(|p| p.stats().bytes_up + p.stats().bytes_down)
            .sum()
    }
}
