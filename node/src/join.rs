//! `weft join`: pairing this device with a device of a person, from a code.
//!
//! Nothing is written on this side unless the inviter welcomes us: a fresh home's
//! device key is made in memory and saved only with the certificate that arrives.
use crate::NodeError;
use crate::pairing::{Invite, proof};
use crate::protocol::*;
use libp2p::Multiaddr;
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft_crypto::{DeviceCertificate, DeviceId, SecretKey};
use weft_store::store::now_ms;
use weft_store::{Home, Store};

/// How long `weft join` waits for the inviter.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
struct JoinBehaviour {
    pair: request_response::Behaviour<Codec<PairRequest, PairResponse>>,
}

/// What joining set up.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Joined {
    /// This device's id.
    pub device: String,
    /// The person's id.
    pub person: String,
    /// Folders set up here: name and path.
    pub folders: Vec<(String, PathBuf)>,
}

/// Pairs the device of `home` using `code`; folders go under `dir`.
pub async fn join(home: &Home, code: &str, dir: &Path, name: &str) -> Result<Joined, NodeError> {
    let inv = Invite::decode(code).map_err(|e| NodeError::Pairing(e.to_string()))?;
    if inv.expires_ms <= now_ms() {
        return Err(NodeError::Pairing(
            "the pairing code has expired: make a new one with `weft invite`".into(),
        ));
    }
    let existing = home.is_initialized();
    let device = if existing {
        let store = Store::open(home)?;
        if !store.folders()?.is_empty() {
            return Err(NodeError::Pairing(
                "this device already has folders of its own; join from a fresh --home".into(),
            ));
        }
        home.device_key()?
    } else {
        SecretKey::generate()
    };
    let me = DeviceId(device.public());
    let mut swarm = crate::node::swarm_with(&device, Duration::from_secs(30), |_| JoinBehaviour {
        pair: pair_behaviour(Use {
            support: ProtocolSupport::Full,
            streams: 2,
            timeout: JOIN_TIMEOUT,
        }),
    })?;
    let inviter = crate::node::peer_id_of(&inv.device)
        .ok_or_else(|| NodeError::Pairing("bad inviter id".into()))?;
    let addrs: Vec<Multiaddr> = inv.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    if addrs.is_empty() {
        return Err(NodeError::Pairing(
            "the code carries no address to reach the inviting device".into(),
        ));
    }
    for a in &addrs {
        swarm.add_peer_address(inviter, a.clone());
    }
    swarm.behaviour_mut().pair.send_request(
        &inviter,
        PairRequest::Join {
            proof: proof(&inv.secret, &me),
            name: name.to_owned(),
        },
    );
    let welcome = tokio::time::timeout(JOIN_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(JoinBehaviourEvent::Pair(
                    request_response::Event::Message {
                        peer,
                        message: request_response::Message::Response { response, .. },
                        ..
                    },
                )) if peer == inviter => return Ok(response),
                SwarmEvent::Behaviour(JoinBehaviourEvent::Pair(
                    request_response::Event::OutboundFailure { error, .. },
                )) => {
                    return Err(NodeError::Pairing(format!(
                        "cannot reach the inviting device: {error}"
                    )));
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| {
        NodeError::Pairing(
            "the inviting device did not answer (is `weft up` running there?)".into(),
        )
    })??;
    let (person_seed, cert, folders, devices, relays) = match welcome {
        PairResponse::Welcome {
            person_seed,
            cert,
            folders,
            devices,
            relays,
        } => (person_seed, cert, folders, devices, relays),
        PairResponse::Refused { reason } => {
            return Err(NodeError::Pairing(format!(
                "refused by the inviting device: {reason}"
            )));
        }
    };
    let cert = DeviceCertificate::from_bytes(&cert).map_err(weft_store::StoreError::from)?;
    let person = SecretKey::from_seed(&person_seed);
    cert.verify(Some(&weft_crypto::PersonId(person.public())))
        .map_err(weft_store::StoreError::from)?;
    if cert.body.device != me {
        return Err(NodeError::Pairing(
            "the certificate received is for another device".into(),
        ));
    }
    // Welcomed: now write.
    let id = home.init_joined(&device, &person_seed, &cert)?;
    let store = Store::open(home)?;
    for d in devices {
        if let Ok(c) = DeviceCertificate::from_bytes(&d)
            && c.body.person == id.person_id()
        {
            store.remember_device(&c)?;
        }
    }
    store.remember_addrs(&inv.device, &inv.addrs)?;
    // The person's relays: this device backs up to them too.
    for r in relays.iter().take(16) {
        if r.parse::<Multiaddr>().is_ok() {
            store.add_relay(r)?;
        }
    }
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
