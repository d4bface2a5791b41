//! How an arbitrator judges a provider's answer to an uptime probe (#13.10, THREATS P1), as a
//! pure function of what the provider signed and what the arbitrator computed itself.
//!
//! A probe carries a fresh nonce. The provider's hosting layer says whether the contract's
//! instance runs and, when the image exports `agora_probe(i64) -> i64`, calls it on the live
//! instance with the nonce and signs the value. The arbitrator calls the same export with the
//! same nonce on its own fresh instance of the contract's image ([`GuestExpectation`]); the
//! driver does that (wasmtime lives in `node`), this module only compares.
//!
//! What a match proves: the provider holds the image and executed its export at probe time.
//! It does not prove the guest ran between probes: a provider that instantiates the image on
//! demand passes. The value must be a pure function of the nonce (and the image): a guest
//! whose `agora_probe` reads its own state, the clock or host imports answers differently on a
//! live instance and a fresh one, and its honest provider is counted down.

/// What the arbitrator computed for the probe's nonce on its own instance of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExpectation {
    /// The image's `agora_probe` returned this value.
    Value(i64),
    /// The image exports no `agora_probe`: the hosting layer's word is all there is.
    NoExport,
    /// The arbitrator could not compute it (image not fetched in time, compile or call failed);
    /// the hosting layer's word decides, and the driver counts the probe as unverified.
    Unknown(String),
}

/// Why a signed answer counts as down.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFault {
    /// The provider says its hosting layer does not run the instance.
    #[error("the provider reports its service not running")]
    NotRunning,
    /// The image exports `agora_probe` but the answer carries no value from it.
    #[error("the image exports agora_probe but the answer carries no guest value")]
    NoGuestValue,
    /// The answer's value is not what the image computes for the nonce.
    #[error("guest value {answered} is not the image's {expected} for this nonce")]
    GuestMismatch {
        /// What the arbitrator's own instance returned.
        expected: i64,
        /// What the provider signed.
        answered: i64,
    },
}

/// An answer that counts as up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeUp {
    /// The guest's value matched the arbitrator's own computation.
    Verified,
    /// The image has no `agora_probe` export: on the hosting layer's word.
    HostingWord,
    /// The arbitrator could not compute the value: on the hosting layer's word.
    Unverified,
}

/// Judges the provider's signed `running` and `guest` value for one probe against what the
/// arbitrator computed for the same nonce.
pub fn judge_answer(
    running: bool,
    guest: Option<i64>,
    expected: &GuestExpectation,
) -> Result<ProbeUp, ProbeFault> {
    if !running {
        return Err(ProbeFault::NotRunning);
    }
    match expected {
        GuestExpectation::NoExport => Ok(ProbeUp::HostingWord),
        GuestExpectation::Unknown(_) => Ok(ProbeUp::Unverified),
        GuestExpectation::Value(want) => match guest {
            None => Err(ProbeFault::NoGuestValue),
            Some(v) if v == *want => Ok(ProbeUp::Verified),
            Some(v) => Err(ProbeFault::GuestMismatch {
                expected: *want,
                answered: v,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_images_own_value_counts_as_verified_up() {
        let want = GuestExpectation::Value(7);
        assert_eq!(judge_answer(true, Some(7), &want), Ok(ProbeUp::Verified));
        assert_eq!(
            judge_answer(true, Some(8), &want),
            Err(ProbeFault::GuestMismatch {
                expected: 7,
                answered: 8
            })
        );
        assert_eq!(
            judge_answer(true, None, &want),
            Err(ProbeFault::NoGuestValue)
        );
        assert_eq!(
            judge_answer(false, Some(7), &want),
            Err(ProbeFault::NotRunning),
            "not running is down whatever the value"
        );
    }

    #[test]
    fn without_the_export_or_a_computed_value_the_hosting_layer_decides() {
        for (e, up) in [
            (GuestExpectation::NoExport, ProbeUp::HostingWord),
            (
                GuestExpectation::Unknown("cold".into()),
                ProbeUp::Unverified,
            ),
        ] {
            assert_eq!(judge_answer(true, None, &e), Ok(up));
            assert_eq!(judge_answer(true, Some(1), &e), Ok(up));
            assert_eq!(judge_answer(false, None, &e), Err(ProbeFault::NotRunning));
        }
    }
}
