//! Human unit parsing: `500m`, `2`, `256MiB`, `1GB`, `10Mbps`, `2h`, `lora,ble`, `LAT,LON,KM`.

use std::collections::BTreeMap;

use super::{Interface, Location, Near};

/// A value that could not be parsed; the message shows an accepted example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The input was empty.
    #[error("empty {what}; expected e.g. {example}")]
    Empty {
        /// What was being parsed.
        what: &'static str,
        /// An accepted example.
        example: &'static str,
    },
    /// The number part is not a number.
    #[error("'{input}' is not a valid {what}; expected e.g. {example}")]
    BadNumber {
        /// The offending input.
        input: String,
        /// What was being parsed.
        what: &'static str,
        /// An accepted example.
        example: &'static str,
    },
    /// The unit suffix is not known.
    #[error("unknown unit '{unit}' in '{input}' for {what}; use one of {allowed}")]
    BadUnit {
        /// The offending input.
        input: String,
        /// The unit found.
        unit: String,
        /// What was being parsed.
        what: &'static str,
        /// Allowed units.
        allowed: &'static str,
    },
    /// The value does not fit in 64 bits.
    #[error("'{input}' is too large for {what}")]
    TooLarge {
        /// The offending input.
        input: String,
        /// What was being parsed.
        what: &'static str,
    },
    /// An interface name is not known.
    #[error("unknown interface '{0}'; use lora, ble, zigbee, wifi, ethernet or cellular")]
    BadInterface(String),
    /// A location is malformed or out of range.
    #[error("'{0}' is not LAT,LON,KM (lat -90..90, lon -180..180, km > 0), e.g. 48.85,2.35,25")]
    BadNear(String),
}

/// Splits `"256MiB"` into (`"256"`, `"MiB"`), both trimmed.
fn split_number(input: &str) -> (&str, &str) {
    let s = input.trim();
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (s[..idx].trim(), s[idx..].trim())
}

/// Parses `number * multiplier` exactly for integers and rounds down fractional inputs.
fn scaled(
    input: &str,
    num: &str,
    mult: u64,
    what: &'static str,
    example: &'static str,
) -> Result<u64, UnitError> {
    let bad = || UnitError::BadNumber {
        input: input.to_string(),
        what,
        example,
    };
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or(UnitError::TooLarge {
            input: input.to_string(),
            what,
        });
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(UnitError::TooLarge {
            input: input.to_string(),
            what,
        });
    }
    Ok(v as u64)
}

fn parse_with(
    input: &str,
    what: &'static str,
    example: &'static str,
    allowed: &'static str,
    unit_mult: impl Fn(&str) -> Option<u64>,
) -> Result<u64, UnitError> {
    if input.trim().is_empty() {
        return Err(UnitError::Empty { what, example });
    }
    let (num, unit) = split_number(input);
    let mult = unit_mult(unit).ok_or_else(|| UnitError::BadUnit {
        input: input.to_string(),
        unit: unit.to_string(),
        what,
        allowed,
    })?;
    scaled(input, num, mult, what, example)
}

/// CPU: `500m` → 500 millicores, `2` → 2000, `1.5` → 1500.
pub fn parse_cpu(input: &str) -> Result<u64, UnitError> {
    parse_with(
        input,
        "cpu",
        "500m or 2",
        "m (millicores) or none (cores)",
        |u| match u {
            "m" => Some(1),
            "" => Some(1000),
            _ => None,
        },
    )
}

/// Bytes: `256MiB`, `1GB`, `512KiB`, `100` (bytes). SI units are powers of 1000.
pub fn parse_bytes(input: &str) -> Result<u64, UnitError> {
    parse_with(
        input,
        "size",
        "256MiB or 1GB",
        "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB",
        |u| {
            Some(match u.to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kb" | "k" => 1_000,
                "mb" | "m" => 1_000_000,
                "gb" | "g" => 1_000_000_000,
                "tb" | "t" => 1_000_000_000_000,
                "kib" | "ki" => 1 << 10,
                "mib" | "mi" => 1 << 20,
                "gib" | "gi" => 1 << 30,
                "tib" | "ti" => 1 << 40,
                _ => return None,
            })
        },
    )
}

/// Bandwidth in bits per second: `10Mbps`, `500kbps`, `1Gbps`, `9600bps`.
pub fn parse_bandwidth(input: &str) -> Result<u64, UnitError> {
    parse_with(input, "bandwidth", "10Mbps", "bps, kbps, Mbps, Gbps", |u| {
        Some(match u.to_ascii_lowercase().as_str() {
            "bps" | "" => 1,
            "kbps" => 1_000,
            "mbps" => 1_000_000,
            "gbps" => 1_000_000_000,
            _ => return None,
        })
    })
}

/// Duration in milliseconds: `2h`, `30m`, `45s`, `1500ms`, `1d`.
pub fn parse_duration_ms(input: &str) -> Result<u64, UnitError> {
    parse_with(
        input,
        "duration",
        "2h, 30m, 45s or 1500ms",
        "ms, s, m, h, d",
        |u| {
            Some(match u {
                "ms" => 1,
                "s" => 1_000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return None,
            })
        },
    )
}

/// Interfaces: `lora,ble` or `lora:2,wifi` (count after a colon).
pub fn parse_interfaces(input: &str) -> Result<BTreeMap<Interface, u32>, UnitError> {
    let mut out = BTreeMap::new();
    if input.trim().is_empty() {
        return Err(UnitError::Empty {
            what: "interfaces",
            example: "lora,ble",
        });
    }
    for part in input.split(',') {
        let part = part.trim();
        let (name, count) = match part.split_once(':') {
            Some((n, c)) => {
                let c: u32 = c
                    .trim()
                    .parse()
                    .map_err(|_| UnitError::BadInterface(part.to_string()))?;
                (n.trim(), c)
            }
            None => (part, 1),
        };
        let iface = match name.to_ascii_lowercase().as_str() {
            "lora" => Interface::LoRa,
            "ble" | "bluetooth" => Interface::Ble,
            "zigbee" => Interface::Zigbee,
            "wifi" => Interface::Wifi,
            "ethernet" | "eth" => Interface::Ethernet,
            "cellular" | "lte" => Interface::Cellular,
            _ => return Err(UnitError::BadInterface(name.to_string())),
        };
        let slot: &mut u32 = out.entry(iface).or_insert(0);
        *slot = slot
            .checked_add(count)
            .ok_or_else(|| UnitError::BadInterface(part.to_string()))?;
    }
    out.retain(|_, n| *n > 0);
    Ok(out)
}

/// A near constraint: `LAT,LON,KM`, e.g. `48.85,2.35,25`.
pub fn parse_near(input: &str) -> Result<Near, UnitError> {
    let bad = || UnitError::BadNear(input.to_string());
    let parts: Vec<&str> = input.split(',').map(str::trim).collect();
    let [lat, lon, km] = parts.as_slice() else {
        return Err(bad());
    };
    let near = Near {
        center: Location {
            lat: lat.parse().map_err(|_| bad())?,
            lon: lon.parse().map_err(|_| bad())?,
        },
        max_km: km.trim_end_matches("km").parse().map_err(|_| bad())?,
    };
    if near.is_valid() {
        Ok(near)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        assert_eq!(parse_cpu("500m").unwrap(), 500);
        assert_eq!(parse_cpu("2").unwrap(), 2000);
        assert_eq!(parse_cpu("1.5").unwrap(), 1500);
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bandwidth("10Mbps").unwrap(), 10_000_000);
        assert_eq!(parse_duration_ms("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration_ms("30m").unwrap(), 1_800_000);
        assert_eq!(parse_duration_ms("45s").unwrap(), 45_000);
        assert_eq!(parse_duration_ms("1500ms").unwrap(), 1500);
        let ifs = parse_interfaces("lora,ble").unwrap();
        assert_eq!(ifs.get(&Interface::LoRa), Some(&1));
        assert_eq!(ifs.get(&Interface::Ble), Some(&1));
        assert_eq!(
            parse_interfaces("lora:2").unwrap().get(&Interface::LoRa),
            Some(&2)
        );
        let near = parse_near("48.85,2.35,25").unwrap();
        assert_eq!(near.max_km, 25.0);
    }

    #[test]
    fn errors_are_typed_and_say_what_to_use() {
        assert!(matches!(
            parse_bytes("12XB"),
            Err(UnitError::BadUnit { .. })
        ));
        assert!(matches!(parse_cpu(""), Err(UnitError::Empty { .. })));
        assert!(matches!(parse_cpu("abc"), Err(UnitError::BadUnit { .. })));
        assert!(matches!(parse_cpu("m"), Err(UnitError::BadNumber { .. })));
        assert!(matches!(
            parse_bytes("99999999999TiB"),
            Err(UnitError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_interfaces("lora,wimax"),
            Err(UnitError::BadInterface(_))
        ));
        assert!(matches!(parse_near("95,2,10"), Err(UnitError::BadNear(_))));
        assert!(matches!(parse_near("1,2"), Err(UnitError::BadNear(_))));
        let msg = parse_duration_ms("2y").unwrap_err().to_string();
        assert!(msg.contains("ms, s, m, h, d"), "{msg}");
    }
}
