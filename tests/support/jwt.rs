//! NATS decentralized authentication ("operator mode") for tests: operator, account and user
//! nkeys and the JWTs that bind them, signed here by hand, and the server configuration and
//! `.creds` files that use them.
//!
//! A NATS JWT is `base64url(header).base64url(claims).base64url(signature)`, without padding:
//!
//! - header `{"typ":"JWT","alg":"ed25519-nkey"}`;
//! - claims: `jti` (the claim's id), `iat` (issued at, Unix seconds), `iss` (the signer's public
//!   nkey), `sub` (the subject's public nkey), `name`, optional `exp`, and `nats` with the
//!   type-specific fields, `type` (`operator`, `account`, `user`) and `version: 2`;
//! - signature: the issuer's ed25519 signature of `header.claims` (the two encoded parts).
//!
//! The chain: the operator signs itself and each account; an account signs its users. The
//! `jti` is computed as the NATS JWT library does: the unpadded base32 of the SHA-512/256 hash
//! of the JSON of the standard claims (`aud`, `exp`, `iat`, `iss`, `name`, `nbf`, `sub`, in that
//! order, empty ones left out) without `jti`. The server does not recompute it, but a wrong one
//! would be a wrong claim.
#![allow(clippy::disallowed_methods)] // JWT times are the server's wall-clock seconds

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aether::permissions::Permissions;
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha512_256};

/// Seconds since the Unix epoch, as the server reads JWT times.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// "No limit" in NATS JWT limits. A limit left out counts as 0, which for connections and
/// subscriptions means none at all.
const NO_LIMIT: i64 = -1;

/// Signs `nats` (the type-specific claims) about `subject` with `issuer`.
fn sign(issuer: &KeyPair, subject: &str, name: &str, expires: Option<i64>, nats: Value) -> String {
    let iat = now();
    // The standard claims in the order the NATS JWT library serialises them, `jti` left out.
    let mut standard = serde_json::Map::new();
    if let Some(exp) = expires {
        standard.insert("exp".into(), json!(exp));
    }
    standard.insert("iat".into(), json!(iat));
    standard.insert("iss".into(), json!(issuer.public_key()));
    standard.insert("name".into(), json!(name));
    standard.insert("sub".into(), json!(subject));
    let hashed = serde_json::to_vec(&Value::Object(standard.clone())).expect("JSON");
    let jti = BASE32_NOPAD.encode(&Sha512_256::digest(&hashed));
    let mut claims = standard;
    claims.insert("jti".into(), json!(jti));
    claims.insert("nats".into(), nats);
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(&serde_json::to_vec(&Value::Object(claims)).expect("JSON"));
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
}

/// An account: its key pair and its JWT, signed by the operator.
pub struct Account {
    pub name: String,
    pub key: KeyPair,
    pub jwt: String,
}

/// A user of an account: a `.creds` file aether can connect with.
pub struct User {
    pub key: KeyPair,
    pub jwt: String,
    pub creds: PathBuf,
}

/// An operator with a system account and tenant accounts.
pub struct Operator {
    key: KeyPair,
    pub jwt: String,
    pub system: Account,
}

impl Operator {
    /// A new operator and its system account.
    pub fn new() -> Self {
        let key = KeyPair::new_operator();
        let system_key = KeyPair::new_account();
        let jwt = sign(
            &key,
            &key.public_key(),
            "aether-test-operator",
            None,
            json!({
                "system_account": system_key.public_key(),
                "type": "operator",
                "version": 2,
            }),
        );
        let mut operator = Self {
            system: Account {
                name: String::new(),
                key: KeyPair::new_account(),
                jwt: String::new(),
            },
            key,
            jwt,
        };
        operator.system = operator.account_with_key("SYS", system_key, false, &[]);
        operator
    }

    /// A tenant account `name` with JetStream enabled (no limits).
    pub fn account(&self, name: &str) -> Account {
        self.account_with_key(name, KeyPair::new_account(), true, &[])
    }

    /// A tenant account whose JWT revokes every JWT of `revoked` (user public keys) issued
    /// up to now.
    pub fn account_revoking(&self, account: &Account, revoked: &[String]) -> Account {
        let key = KeyPair::from_seed(&account.key.seed().expect("seed")).expect("key");
        self.account_with_key(&account.name, key, true, revoked)
    }

    fn account_with_key(
        &self,
        name: &str,
        key: KeyPair,
        jetstream: bool,
        revoked: &[String],
    ) -> Account {
        let mut limits = json!({
            "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
            "imports": NO_LIMIT, "exports": NO_LIMIT, "wildcards": true,
            "conn": NO_LIMIT, "leaf": NO_LIMIT,
        });
        if jetstream {
            // JetStream is enabled for an account by a non-zero storage limit.
            let js = json!({
                "mem_storage": NO_LIMIT, "disk_storage": NO_LIMIT,
                "streams": NO_LIMIT, "consumer": NO_LIMIT,
            });
            limits
                .as_object_mut()
                .expect("object")
                .extend(js.as_object().expect("object").clone());
        }
        let mut nats = json!({ "limits": limits, "type": "account", "version": 2 });
        if !revoked.is_empty() {
            // A user JWT issued at or before the time given here is refused.
            let at = now() + 1;
            let list: serde_json::Map<String, Value> =
                revoked.iter().map(|u| (u.clone(), json!(at))).collect();
            nats["revocations"] = Value::Object(list);
        }
        let jwt = sign(&self.key, &key.public_key(), name, None, nats);
        Account {
            name: name.to_owned(),
            key,
            jwt,
        }
    }

    /// The server configuration: trust this operator, and know `accounts` (and the system
    /// account) from memory.
    pub fn server_config(&self, accounts: &[&Account]) -> String {
        let mut preload = format!("  {}: {}\n", self.system.key.public_key(), self.system.jwt);
        for account in accounts {
            preload.push_str(&format!(
                "  {}: {}\n",
                account.key.public_key(),
                account.jwt
            ));
        }
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n{preload}}}\n",
            self.jwt,
            self.system.key.public_key()
        )
    }
}

/// The `nats` claims of a user with `permissions` (`None`: everything allowed).
fn user_claims(permissions: Option<&Permissions>) -> Value {
    let mut nats = json!({
        "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT,
        "type": "user", "version": 2,
    });
    if let Some(p) = permissions {
        nats["pub"] = json!({ "allow": p.publish.allow, "deny": p.publish.deny });
        nats["sub"] = json!({ "allow": p.subscribe.allow, "deny": p.subscribe.deny });
        if p.allow_responses {
            // One reply per request received, within the server's default time.
            nats["resp"] = json!({ "max": 1, "ttl": 0 });
        }
    }
    nats
}

/// A user of `account` with `permissions` (`None`: everything), expiring at `expires` (Unix
/// seconds), its `.creds` file written into `dir`.
pub fn user(
    account: &Account,
    name: &str,
    permissions: Option<&Permissions>,
    expires: Option<i64>,
    dir: &Path,
) -> User {
    let key = KeyPair::new_user();
    let jwt = sign(
        &account.key,
        &key.public_key(),
        name,
        expires,
        user_claims(permissions),
    );
    let creds = dir.join(format!("{name}.creds"));
    std::fs::write(&creds, creds_file(&jwt, &key.seed().expect("seed"))).expect("write creds");
    User { key, jwt, creds }
}

/// A `.creds` file: the user JWT and the user's nkey seed, decorated as `nsc` writes them.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}
