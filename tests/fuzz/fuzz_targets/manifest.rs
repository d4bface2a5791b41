//! Text as a service manifest (`svc.toml`, written by a customer and fetched from storage by
//! the provider). A manifest that parses always yields limits the runtime can run under, and
//! survives a round trip through TOML.
#![no_main]
use agora_image::ServiceManifest;
use agora_runtime::LimitsSide;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = ServiceManifest::from_toml(text) else {
        return;
    };
    m.service_limits()
        .validate(LimitsSide::Requested)
        .expect("a valid manifest asks for usable limits");
    let _ = m.resources();
    let again = toml::to_string(&m).expect("a parsed manifest serialises");
    assert_eq!(ServiceManifest::from_toml(&again).ok().as_ref(), Some(&m));
});
