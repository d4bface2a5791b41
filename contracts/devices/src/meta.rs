//! Device metadata, firmware descriptions and device selectors.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A device's id: the 32-bit address of its radio frames.
pub type DeviceId = u32;

/// Longest kind, firmware type or version string a device may report (bytes).
pub const MAX_LABEL_LEN: usize = 32;

/// What a device is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Its firmware: it sends readings.
    Running,
    /// Its bootloader: it can be flashed, it sends nothing.
    Bootloader,
}

/// What a device says about itself (discovery).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMeta {
    /// Device id.
    pub id: DeviceId,
    /// Kind of device (`thermo`, `gps`, ...).
    pub kind: String,
    /// Firmware family it accepts (an image of another type is never flashed).
    pub firmware_type: String,
    /// Version of the firmware in its active slot.
    pub version: String,
    /// Set by the owner: never reflash or repurpose this device.
    pub locked: bool,
    /// Running or in the bootloader.
    pub mode: Mode,
    /// Boot counter: increases at every (re)boot, so a stale announcement is recognised.
    pub boots: u32,
}

/// A firmware image in the blockstore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    /// CID of the image (text form).
    pub cid: String,
    /// BLAKE3 hash of the image bytes: what a device must report after flashing.
    pub hash: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// Firmware family.
    pub firmware_type: String,
    /// Version label the device reports once it runs this image.
    pub version: String,
}

/// Which devices a job targets: terms of one key are alternatives, different keys must all
/// match (`kind=thermo,kind=gps,type=esp32,id=1-50`). Empty selects every device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// Kinds (any of).
    pub kinds: BTreeSet<String>,
    /// Firmware types (any of).
    pub firmware_types: BTreeSet<String>,
    /// Inclusive id ranges (any of).
    pub ids: Vec<(DeviceId, DeviceId)>,
}

/// A selector that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A term is not `key=value`.
    #[error("selector term {0:?} is not key=value; use kind=K, type=T, id=N or id=N-M, or all")]
    Term(String),
    /// Unknown key.
    #[error("selector key {0:?} unknown; use kind, type or id")]
    Key(String),
    /// A bad id or id range.
    #[error("selector id {0:?} is not N or N-M with N <= M")]
    Id(String),
}

impl Selector {
    /// Parses `all`, or comma-separated `kind=K`, `type=T`, `id=N`, `id=N-M` terms.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut sel = Selector::default();
        let s = s.trim();
        if s.is_empty() || s == "all" {
            return Ok(sel);
        }
        for term in s.split(',').map(str::trim) {
            let (k, v) = term
                .split_once('=')
                .filter(|(_, v)| !v.is_empty())
                .ok_or_else(|| SelectorError::Term(term.to_string()))?;
            match k {
                "kind" => {
                    sel.kinds.insert(v.to_string());
                }
                "type" => {
                    sel.firmware_types.insert(v.to_string());
                }
                "id" => {
                    let bad = || SelectorError::Id(v.to_string());
                    let (a, b) = v.split_once('-').unwrap_or((v, v));
                    let a: DeviceId = a.parse().map_err(|_| bad())?;
                    let b: DeviceId = b.parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(bad());
                    }
                    sel.ids.push((a, b));
                }
                other => return Err(SelectorError::Key(other.to_string())),
            }
        }
        Ok(sel)
    }

    /// Whether `meta` is selected.
    pub fn matches(&self, meta: &DeviceMeta) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&meta.kind))
            && (self.firmware_types.is_empty() || self.firmware_types.contains(&meta.firmware_type))
            && (self.ids.is_empty() || self.ids.iter().any(|(a, b)| (*a..=*b).contains(&meta.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: DeviceId, kind: &str, ty: &str) -> DeviceMeta {
        DeviceMeta {
            id,
            kind: kind.into(),
            firmware_type: ty.into(),
            version: "1.0".into(),
            locked: false,
            mode: Mode::Running,
            boots: 1,
        }
    }

    #[test]
    fn empty_and_all_select_everything() {
        for s in ["", "all", "  all "] {
            let sel = Selector::parse(s).unwrap();
            assert!(sel.matches(&meta(9, "x", "y")));
        }
    }

    #[test]
    fn terms_of_one_key_are_alternatives_and_keys_combine() {
        let sel = Selector::parse("kind=thermo,kind=gps,type=esp32,id=1-10,id=20").unwrap();
        assert!(sel.matches(&meta(5, "gps", "esp32")));
        assert!(sel.matches(&meta(20, "thermo", "esp32")));
        assert!(
            !sel.matches(&meta(15, "thermo", "esp32")),
            "id outside ranges"
        );
        assert!(!sel.matches(&meta(5, "door", "esp32")), "kind not listed");
        assert!(!sel.matches(&meta(5, "gps", "nrf52")), "type not listed");
    }

    #[test]
    fn bad_selectors_say_what_to_write() {
        assert_eq!(
            Selector::parse("kind"),
            Err(SelectorError::Term("kind".into()))
        );
        assert_eq!(
            Selector::parse("colour=red"),
            Err(SelectorError::Key("colour".into()))
        );
        assert_eq!(
            Selector::parse("id=9-3"),
            Err(SelectorError::Id("9-3".into()))
        );
        assert_eq!(Selector::parse("id=x"), Err(SelectorError::Id("x".into())));
    }
}
