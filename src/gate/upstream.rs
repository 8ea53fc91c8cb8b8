//! Upstream hosts and how a session picks one: weighted at random among the
//! hosts its `targetServer` names (or among all hosts when it names none),
//! with the remaining candidates, again weighted, as fallbacks.

use rand::Rng;
use std::net::SocketAddr;

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name a client's `targetServer` can ask for.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative weight; 0 = only when asked for by name.
    pub weight: u32,
}

/// The configured upstream hosts.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    hosts: Vec<Host>,
}

impl Upstreams {
    /// Wraps a host list.
    pub fn new(hosts: Vec<Host>) -> Self {
        Upstreams { hosts }
    }

    /// Whether no host is configured.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The order in which to try hosts for a session asking for `target`:
    /// a weighted random permutation of the candidates. Empty when nothing fits.
    pub fn order(&self, target: Option<&str>, rng: &mut impl Rng) -> Vec<usize> {
        let named: Vec<usize> = match target {
            Some(t) if !t.is_empty() => (0..self.hosts.len())
                .filter(|&i| self.hosts[i].name == t)
                .collect(),
            _ => Vec::new(),
        };
        let mut candidates: Vec<usize> = if named.is_empty() {
            (0..self.hosts.len())
                .filter(|&i| self.hosts[i].weight > 0)
                .collect()
        } else {
            named
        };
        let mut order = Vec::with_capacity(candidates.len());
        while !candidates.is_empty() {
            // Hosts named explicitly may have weight 0; treat them as 1 then.
            let weight = |i: usize| self.hosts[i].weight.max(1) as u64;
            let total: u64 = candidates.iter().map(|&i| weight(i)).sum();
            let mut pick = rng.random_range(0..total);
            let pos = candidates
                .iter()
                .position(|&i| {
                    let w = weight(i);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            order.push(candidates.swap_remove(pos));
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn host(name: &str, port: u16, weight: u32) -> Host {
        Host {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
        }
    }

    #[test]
    fn target_restricts_to_named_hosts() {
        let up = Upstreams::new(vec![host("a", 1, 1), host("b", 2, 1), host("b", 3, 1)]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let order = up.order(Some("b"), &mut rng);
            assert_eq!(order.len(), 2);
            assert!(order.iter().all(|&i| up.hosts()[i].name == "b"));
        }
    }

    #[test]
    fn unknown_target_uses_all_weighted_hosts() {
        let up = Upstreams::new(vec![host("a", 1, 1), host("b", 2, 0)]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        assert_eq!(up.order(Some("zzz"), &mut rng), vec![0]);
        assert_eq!(up.order(None, &mut rng), vec![0]);
        assert_eq!(up.order(Some("b"), &mut rng), vec![1]);
    }

    #[test]
    fn weights_shape_the_first_choice() {
        let up = Upstreams::new(vec![host("a", 1, 1), host("b", 2, 9)]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let firsts_b = (0..10_000)
            .filter(|_| up.order(None, &mut rng)[0] == 1)
            .count();
        // Expected 9000; a 6-sigma band around it (sigma = 30) keeps this deterministic for the seed.
        assert!((8820..=9180).contains(&firsts_b), "{firsts_b}");
    }
}
