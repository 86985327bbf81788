//! The in-memory network between replicas (STYLE.md P7: the transport contract is weak on
//! purpose). Each Raft message is routed on its own: dropped by a partition (a cut directed
//! link), lost at random, duplicated, or delivered after a latency with a heavy tail, so
//! messages on one link overtake each other. Client ↔ replica traffic does not pass through
//! here: it models a connection, which fails only when the replica crashes.

use rand::Rng;

/// What happens to one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A partition cuts the link.
    Partitioned,
    /// Lost at random.
    Lost,
    /// Delivered once, or twice when duplicated, after these delays (ms).
    Deliver { delays: Vec<u64> },
}

/// Per-message fault rates in per mille, chosen per seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Messages delayed by 20-400 ms instead of 1-5 ms.
    pub slow_per_mille: u32,
}

pub struct Network {
    nodes: usize,
    /// `cuts[from * nodes + to]`: how many active partitions cut that directed link.
    cuts: Vec<u32>,
    rates: Rates,
}

impl Network {
    pub fn new(nodes: usize, rates: Rates) -> Self {
        Network {
            nodes,
            cuts: vec![0; nodes * nodes],
            rates,
        }
    }

    /// Stops random faults (partitions are healed one by one with [`Network::uncut`]).
    pub fn calm(&mut self) {
        self.rates = Rates::default();
    }

    pub fn cut(&mut self, from: usize, to: usize) {
        self.cuts[from * self.nodes + to] += 1;
    }

    pub fn uncut(&mut self, from: usize, to: usize) {
        let cut = &mut self.cuts[from * self.nodes + to];
        *cut = cut.saturating_sub(1);
    }

    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cuts[from * self.nodes + to] > 0
    }

    pub fn route(&self, rng: &mut impl Rng, from: usize, to: usize) -> Route {
        if self.is_cut(from, to) {
            return Route::Partitioned;
        }
        if rng.gen_range(0..1000) < self.rates.drop_per_mille {
            return Route::Lost;
        }
        let copies = if rng.gen_range(0..1000) < self.rates.duplicate_per_mille {
            2
        } else {
            1
        };
        let delays = (0..copies)
            .map(|_| {
                let base = rng.gen_range(1..=5);
                if rng.gen_range(0..1000) < self.rates.slow_per_mille {
                    base + rng.gen_range(20..=400)
                } else {
                    base
                }
            })
            .collect();
        Route::Deliver { delays }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn partitions_cut_directed_links_and_stack() {
        let mut network = Network::new(3, Rates::default());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        network.cut(0, 1);
        network.cut(0, 1);
        assert_eq!(network.route(&mut rng, 0, 1), Route::Partitioned);
        assert!(matches!(
            network.route(&mut rng, 1, 0),
            Route::Deliver { .. }
        ));
        network.uncut(0, 1);
        assert!(network.is_cut(0, 1), "one partition still cuts it");
        network.uncut(0, 1);
        assert!(matches!(
            network.route(&mut rng, 0, 1),
            Route::Deliver { .. }
        ));
    }

    #[test]
    fn calm_network_delivers_everything_once_and_fast() {
        let mut network = Network::new(
            2,
            Rates {
                drop_per_mille: 1000,
                duplicate_per_mille: 1000,
                slow_per_mille: 1000,
            },
        );
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        assert_eq!(network.route(&mut rng, 0, 1), Route::Lost);
        network.calm();
        for _ in 0..100 {
            let Route::Deliver { delays } = network.route(&mut rng, 0, 1) else {
                panic!("a calm network delivers");
            };
            assert_eq!(delays.len(), 1);
            assert!((1..=5).contains(&delays[0]));
        }
    }
}
