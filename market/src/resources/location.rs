//! Geographic location and the "near" constraint (great-circle distance).

use serde::{Deserialize, Serialize};

/// Mean Earth radius used by the haversine formula.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// A point on Earth in degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
}

impl Location {
    /// True when the coordinates are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }

    /// Great-circle distance to `other` in kilometres.
    pub fn distance_km(&self, other: &Location) -> f64 {
        haversine_km(*self, *other)
    }
}

/// Great-circle distance between two points in kilometres.
pub fn haversine_km(a: Location, b: Location) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// "Within `max_km` of `center`".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Near {
    /// The reference point.
    pub center: Location,
    /// Maximum distance in kilometres.
    pub max_km: f64,
}

impl Near {
    /// Longest meaningful distance (half the Earth's circumference, rounded up).
    pub const MAX_KM: f64 = 20_100.0;

    /// True when the point and radius are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.center.is_valid()
            && self.max_km.is_finite()
            && self.max_km > 0.0
            && self.max_km <= Self::MAX_KM
    }

    /// Distance from the center if `at` is within range, else `None`.
    pub fn admits(&self, at: &Location) -> Option<f64> {
        let d = self.center.distance_km(at);
        (d <= self.max_km).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paris_to_london_is_about_344_km() {
        let paris = Location {
            lat: 48.8566,
            lon: 2.3522,
        };
        let london = Location {
            lat: 51.5074,
            lon: -0.1278,
        };
        let d = haversine_km(paris, london);
        assert!((d - 343.5).abs() < 2.0, "got {d}");
        let near = Near {
            center: paris,
            max_km: 300.0,
        };
        assert!(near.admits(&london).is_none());
        assert!(near.admits(&paris).is_some());
    }

    #[test]
    fn invalid_coordinates_are_detected() {
        assert!(
            !Location {
                lat: 91.0,
                lon: 0.0
            }
            .is_valid()
        );
        assert!(
            !Location {
                lat: f64::NAN,
                lon: 0.0
            }
            .is_valid()
        );
        let near = Near {
            center: Location { lat: 0.0, lon: 0.0 },
            max_km: 0.0,
        };
        assert!(!near.is_valid());
    }
}
