//! Lines of a service on one node (issue #15, start-first upgrades): which of several hosted
//! contracts of the same service holds its devices and key-value state. Pure.
//!
//! Rules, each with a unit test below:
//! - Hosted contracts with the same customer and the same manifest name form a line (an
//!   upgrade's old and new contract do; two customers never share one).
//! - The first contract of a line to activate holds it ([`Activation::Hold`]): it gets the
//!   devices. One that activates while another holds the line stands by
//!   ([`Activation::Standby`]): its service runs, it gets no device, so no reading is processed
//!   by both.
//! - When the holder ends and the line has a stand-by, the newest stand-by takes over
//!   ([`Ending::Switch`]: the devices and the state move to it); a stand-by that ends moves
//!   nothing and releases no device ([`Ending::Standby`]); a holder alone ends as before
//!   ([`Ending::Alone`]).
//! - Bounded: at most [`MAX_LINE`] contracts per line and [`MAX_LINES`] lines; a contract that
//!   finds no room is not tracked and ends [`Ending::Alone`] (an extra stand-by of a full line
//!   never gets devices; a new line when the table is full holds its devices untracked).

use std::collections::BTreeMap;

use agora_market::NodeId;

use crate::ContractId;

/// Contracts one line tracks (an upgrade needs two; a rollback mid-wave three).
pub const MAX_LINE: usize = 4;
/// Lines one node tracks.
pub const MAX_LINES: usize = 1024;

/// What an activating contract does with its devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Take the devices: no other contract of the line holds them.
    Hold,
    /// Start without devices: `holder` has them and hands them over when it ends.
    Standby {
        /// The contract that holds the line.
        holder: ContractId,
    },
}

/// What an ending contract does with its devices and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Release its devices, as a contract alone does (also: a contract never tracked).
    Alone,
    /// It held no device: stop it, release nothing.
    Standby,
    /// Hand the devices and the key-value state to `to` first, then stop.
    Switch {
        /// The stand-by that takes the line over.
        to: ContractId,
    },
}

/// The lines of the contracts hosted here.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    /// Per line `(customer, name)`: its contracts, the holder first, stand-bys in activation
    /// order.
    lines: BTreeMap<(NodeId, String), Vec<ContractId>>,
    of: BTreeMap<ContractId, (NodeId, String)>,
}

impl Lines {
    /// `contract` (of `customer`, manifest `name`) activates. Idempotent: a contract already
    /// tracked gets its current role.
    pub fn activate(&mut self, contract: ContractId, customer: NodeId, name: &str) -> Activation {
        if let Some(key) = self.of.get(&contract) {
            let line = self.lines.get(key).map(Vec::as_slice).unwrap_or_default();
            return match line.first() {
                Some(h) if *h != contract => Activation::Standby { holder: *h },
                _ => Activation::Hold,
            };
        }
        let key = (customer, name.to_string());
        match self.lines.get_mut(&key) {
            Some(line) => {
                let holder = line.first().copied().unwrap_or(contract);
                if line.len() < MAX_LINE {
                    line.push(contract);
                    self.of.insert(contract, key);
                }
                Activation::Standby { holder }
            }
            None => {
                if self.lines.len() < MAX_LINES {
                    self.lines.insert(key.clone(), vec![contract]);
                    self.of.insert(contract, key);
                }
                Activation::Hold
            }
        }
    }

    /// `contract` ends (its service stops): what it hands over.
    pub fn end(&mut self, contract: &ContractId) -> Ending {
        let Some(key) = self.of.remove(contract) else {
            return Ending::Alone;
        };
        let Some(line) = self.lines.get_mut(&key) else {
            return Ending::Alone;
        };
        let held = line.first() == Some(contract);
        line.retain(|c| c != contract);
        if !held {
            return Ending::Standby;
        }
        // The newest stand-by takes over: it is the deployer's latest intent.
        let Some(to) = line.pop() else {
            self.lines.remove(&key);
            return Ending::Alone;
        };
        line.insert(0, to);
        Ending::Switch { to }
    }

    /// Whether `contract` holds its line (or is not tracked).
    pub fn holds(&self, contract: &ContractId) -> bool {
        self.of
            .get(contract)
            .and_then(|k| self.lines.get(k)?.first())
            .is_none_or(|h| h == contract)
    }
}

/// At a switch from a holder with `old` devices to a stand-by with `new` ones: `(moved, released,
/// added)` — the devices both take (routed over with their sequence numbers), those only the old
/// one takes (released with a checkpoint), and those only the new one takes (assigned fresh).
pub fn switch_devices(old: &[u32], new: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut moved: Vec<u32> = old.iter().filter(|d| new.contains(d)).copied().collect();
    let mut released: Vec<u32> = old.iter().filter(|d| !new.contains(d)).copied().collect();
    let mut added: Vec<u32> = new.iter().filter(|d| !old.contains(d)).copied().collect();
    for v in [&mut moved, &mut released, &mut added] {
        v.sort_unstable();
        v.dedup();
    }
    (moved, released, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ContractId {
        ContractId([n; 32])
    }

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn the_first_contract_holds_and_a_later_one_of_its_line_stands_by() {
        let mut l = Lines::default();
        assert_eq!(l.activate(c(1), node(9), "counter"), Activation::Hold);
        assert_eq!(
            l.activate(c(2), node(9), "counter"),
            Activation::Standby { holder: c(1) }
        );
        // Idempotent.
        assert_eq!(l.activate(c(1), node(9), "counter"), Activation::Hold);
        assert_eq!(
            l.activate(c(2), node(9), "counter"),
            Activation::Standby { holder: c(1) }
        );
        assert!(l.holds(&c(1)) && !l.holds(&c(2)));
        // Another name, or another customer, is another line.
        assert_eq!(l.activate(c(3), node(9), "other"), Activation::Hold);
        assert_eq!(l.activate(c(4), node(8), "counter"), Activation::Hold);
    }

    #[test]
    fn the_holder_ending_switches_to_the_newest_standby() {
        let mut l = Lines::default();
        l.activate(c(1), node(9), "counter");
        l.activate(c(2), node(9), "counter");
        l.activate(c(3), node(9), "counter");
        assert_eq!(l.end(&c(1)), Ending::Switch { to: c(3) });
        assert!(l.holds(&c(3)) && !l.holds(&c(2)));
        // The one left stands by the new holder.
        assert_eq!(l.end(&c(2)), Ending::Standby);
        assert_eq!(l.end(&c(3)), Ending::Alone);
        // The line is gone: a new contract of it holds at once.
        assert_eq!(l.activate(c(4), node(9), "counter"), Activation::Hold);
    }

    #[test]
    fn a_standby_ending_moves_nothing_and_a_rollback_moves_back() {
        let mut l = Lines::default();
        // v1 holds; a sick v2 stands by and is released: v1 keeps everything.
        l.activate(c(1), node(9), "counter");
        l.activate(c(2), node(9), "counter");
        assert_eq!(l.end(&c(2)), Ending::Standby);
        assert!(l.holds(&c(1)));
        // v2 took over; the rollback restarts v1 as a new contract and releases v2: back.
        l.activate(c(3), node(9), "counter");
        assert_eq!(l.end(&c(1)), Ending::Switch { to: c(3) });
        l.activate(c(4), node(9), "counter");
        assert_eq!(l.end(&c(3)), Ending::Switch { to: c(4) });
        assert_eq!(l.end(&c(4)), Ending::Alone);
        // Never tracked.
        assert_eq!(l.end(&c(5)), Ending::Alone);
    }

    #[test]
    fn lines_are_bounded() {
        let mut l = Lines::default();
        for i in 0..MAX_LINE as u8 + 2 {
            l.activate(c(i), node(9), "counter");
        }
        // The extra stand-bys are not tracked: they end alone and never take over.
        assert_eq!(l.end(&c(MAX_LINE as u8 + 1)), Ending::Alone);
        assert_eq!(
            l.end(&c(0)),
            Ending::Switch {
                to: c(MAX_LINE as u8 - 1)
            }
        );
        let mut l = Lines::default();
        for i in 0..MAX_LINES as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            l.activate(ContractId(id), node(1), &i.to_string());
        }
        assert_eq!(l.activate(c(200), node(2), "x"), Activation::Hold);
        assert_eq!(l.end(&c(200)), Ending::Alone);
        assert_eq!(l.lines.len(), MAX_LINES);
    }

    #[test]
    fn a_switch_moves_the_shared_devices_and_releases_the_rest() {
        assert_eq!(
            switch_devices(&[101, 102], &[102, 103, 103]),
            (vec![102], vec![101], vec![103])
        );
        assert_eq!(switch_devices(&[], &[]), (vec![], vec![], vec![]));
    }
}
