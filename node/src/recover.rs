//! `weft join RECOVERY-KEY --relay ADDR`: a new device of a person whose other devices
//! are gone, set up from the recovery key and a relay alone.
//!
//! The recovery key is the person key: with it this device certifies its own new
//! device key, registers at the relay, and fetches the folders' key envelopes (sealed
//! to the person's key when the lost devices backed up). Nothing is written here
//! unless the relay answers with at least one folder this key opens. The files, their
//! history and old versions then come from the relay when the node runs.
use crate::NodeError;
use crate::join::Joined;
use crate::protocol::*;
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId};
use std::path::Path;
use std::time::Duration;
use weft_crypto::{DeviceCertificate, DeviceId, SecretKey};
use weft_store::store::now_ms;
use weft_store::{Home, Store};

/// How long recovery waits for each answer of the relay.
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
struct RecoverBehaviour {
    store: request_response::Behaviour<Codec<StoreRequest, StoreResponse>>,
}

/// Sets up the device of `home` from `recovery_key` and the relay at `relay`
/// (a multiaddr ending in `/p2p/<id>`); folders go under `dir`.
pub async fn recover(
    home: &Home,
    recovery_key: &str,
    relay: &str,
    dir: &Path,
    name: &str,
) -> Result<Joined, NodeError> {
    let fail = NodeError::Recovery;
    let person = weft_crypto::recovery::decode(recovery_key).map_err(|e| fail(e.to_string()))?;
    if home.is_initialized() {
        return Err(fail(format!(
            "{} already holds a device; recover into a fresh --home",
            home.root().display()
        )));
    }
    let addr: Multiaddr = relay
        .parse()
        .map_err(|e| fail(format!("bad relay address {relay}: {e}")))?;
    let Some(libp2p::multiaddr::Protocol::P2p(relay_peer)) = addr.iter().last() else {
        return Err(fail(
            "the relay address must end in /p2p/<relay id> (as `weft relay serve` prints it)"
                .into(),
        ));
    };
    let device = SecretKey::generate();
    let me = DeviceId(device.public());
    let cert = DeviceCertificate::issue(&person, me, name, now_ms());
    let mut swarm = crate::node::swarm_with(&device, RECOVER_TIMEOUT, |_| RecoverBehaviour {
        store: store_behaviour(Use {
            support: ProtocolSupport::Outbound,
            streams: 2,
            timeout: RECOVER_TIMEOUT,
        }),
    })?;
    swarm.add_peer_address(relay_peer, addr);
    let mut ask = async |req: StoreRequest| -> Result<StoreResponse, NodeError> {
        swarm.behaviour_mut().store.send_request(&relay_peer, req);
        let resp = tokio::time::timeout(RECOVER_TIMEOUT, answer(&mut swarm, relay_peer))
            .await
            .map_err(|_| fail("the relay did not answer".into()))??;
        match resp {
            StoreResponse::Refused { reason } => Err(fail(format!("the relay refused: {reason}"))),
            r => Ok(r),
        }
    };
    match ask(StoreRequest::Register {
        cert: cert.to_bytes(),
    })
    .await?
    {
        StoreResponse::Registered { .. } => {}
        r => return Err(fail(format!("unexpected answer from the relay: {r:?}"))),
    }
    let keys = match ask(StoreRequest::Keys).await? {
        StoreResponse::Keys { keys } => keys,
        r => return Err(fail(format!("unexpected answer from the relay: {r:?}"))),
    };
    let mut folders = Vec::new();
    for (folder, envelope) in keys.iter().take(1024) {
        match crate::upload::open_key_envelope(&person, folder, envelope) {
            Ok(f) => folders.push(f),
            Err(e) => tracing::warn!("skipped folder {folder}: {e}"),
        }
    }
    if folders.is_empty() {
        return Err(fail(
            "the relay holds no folder this recovery key opens (was it added with `weft relay add` on the lost device?)"
                .into(),
        ));
    }
    // Everything checked: now write.
    let id = home.init_joined(&device, &person.to_seed(), &cert)?;
    let store = Store::open(home)?;
    store.add_relay(relay)?;
    let mut set_up = Vec::new();
    for f in folders {
        let root = dir.join(&f.name);
        let rec = store.import_folder(&f, &root)?;
        set_up.push((rec.name.clone(), rec.root_path()));
    }
    Ok(Joined {
        device: id.device_id().to_string(),
        person: id.person_id().to_string(),
        folders: set_up,
    })
}

/// The relay's answer to the request in flight.
async fn answer(
    swarm: &mut libp2p::Swarm<RecoverBehaviour>,
    relay: PeerId,
) -> Result<StoreResponse, NodeError> {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(RecoverBehaviourEvent::Store(
                request_response::Event::Message {
                    peer,
                    message: request_response::Message::Response { response, .. },
                    ..
                },
            )) if peer == relay => return Ok(response),
            SwarmEvent::Behaviour(RecoverBehaviourEvent::Store(
                request_response::Event::OutboundFailure { error, .. },
            )) => {
                return Err(NodeError::Recovery(format!(
                    "cannot reach the relay: {error}"
                )));
            }
            _ => {}
        }
    }
}
