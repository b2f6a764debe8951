//! CRIU's replies on the swrk socket: a `CriuResp` decoded from one packet, the notification
//! it may carry, and the version it may report. Nothing a peer sends may panic the engine.
#![no_main]

use criu_proto::prost::Message;
use criu_proto::rpc::CriuResp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = CriuResp::decode(data) else {
        return;
    };
    if let Some(n) = &resp.notify {
        let script = n.script.clone().unwrap_or_default();
        let notification = cpengine::criu::Notification::from_wire(&script, n.pid, Vec::new());
        assert_eq!(notification.script(), script.as_str());
    }
    let _ = cpengine::criu::version_from_reply(resp.version.clone());
    let _ = resp.r#type();
    // Whatever decodes must re-encode.
    let _ = CriuResp::decode(resp.encode_to_vec().as_slice()).expect("re-decoding");
});
