//! RequestAuthentication at the waypoint: finds a JWT where the rules say (`fromHeaders`, default
//! `Authorization: Bearer`; `fromParams`, default `access_token`), verifies it against the issuer's
//! JWKS (signature, `exp`/`nbf` with Envoy's 60 s clock skew, issuer, audiences) and yields the
//! request principal (`iss/sub`) and claims that L7 AuthorizationPolicy reads.
//!
//! Istio's semantics: a request without a token passes unauthenticated (a policy may then require
//! a principal); a request with an invalid token is refused with 401, whatever the policies say.
//! Keys come from inline `jwks` or from the document fetched from `jwksUri` ([`super::jwks`]); a
//! rule whose keys could not be fetched refuses its tokens (fail closed).
use std::{collections::HashMap, sync::Arc};

use http::{HeaderMap, HeaderName};
use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::kinds::request_authentication::JwtRule;

/// A verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct Authenticated {
    /// `iss/sub`, Istio's request principal.
    pub principal: String,
    pub claims: Value,
    /// The rule that accepted it.
    pub rule: usize,
    /// Where the token was read (so it can be removed unless `forwardOriginalToken`).
    pub from: TokenSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header(String),
    Param(String),
}

/// Why a token was refused; the message is Envoy's, sent as the 401 body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt verification fails")]
    Signature,
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoKey,
    #[error("Jwks remote fetch is failed")]
    RemoteJwks,
}

/// Parsed JWKS documents, keyed by their text (parsed once per distinct document).
#[derive(Default)]
pub struct KeyCache(Mutex<HashMap<String, Option<Arc<JwkSet>>>>);

impl KeyCache {
    fn get(&self, text: &str) -> Option<Arc<JwkSet>> {
        let mut m = self.0.lock();
        if m.len() > 256 {
            m.clear();
        }
        m.entry(text.to_string())
            .or_insert_with(|| serde_json::from_str::<JwkSet>(text).ok().map(Arc::new))
            .clone()
    }
}

fn default_headers() -> Vec<(String, String)> {
    vec![("authorization".into(), "Bearer ".into())]
}

/// The tokens a rule looks for in this request.
fn tokens(rule: &JwtRule, headers: &HeaderMap, query: &str) -> Vec<(String, TokenSource)> {
    let mut out = Vec::new();
    let hs: Vec<(String, String)> = if rule.from_headers.is_empty() && rule.from_params.is_empty() {
        default_headers()
    } else {
        rule.from_headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.prefix.clone().unwrap_or_default()))
            .collect()
    };
    for (name, prefix) in hs {
        for v in headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()) {
            if let Some(t) = v.strip_prefix(prefix.as_str()) {
                out.push((t.trim().to_string(), TokenSource::Header(name.clone())));
            }
        }
    }
    let params: Vec<String> = if rule.from_headers.is_empty() && rule.from_params.is_empty() {
        vec!["access_token".into()]
    } else {
        rule.from_params.clone()
    };
    for p in params {
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=')
                && k == p
            {
                out.push((v.to_string(), TokenSource::Param(p.clone())));
            }
        }
    }
    out
}

/// The issuer a token claims, read without verification (to pick the rule that verifies it).
fn claimed_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// The JWKS documents fetched from `jwksUri`s, by URI.
pub type Remote<'a> = &'a dyn Fn(&str) -> Option<Arc<String>>;

fn verify(token: &str, rule: &JwtRule, keys: &KeyCache, remote: Remote<'_>) -> Result<Value, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    let fetched;
    let jwks: &str = match (&rule.jwks, &rule.jwks_uri) {
        (Some(inline), _) => inline,
        (None, Some(uri)) => {
            fetched = remote(uri).ok_or(JwtError::RemoteJwks)?;
            &fetched
        }
        (None, None) => return Err(JwtError::NoKey),
    };
    let set = keys.get(jwks).ok_or(JwtError::NoKey)?;
    let jwk = match &header.kid {
        Some(kid) => set.find(kid),
        None => set.keys.first(),
    }
    .ok_or(JwtError::NoKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| JwtError::NoKey)?;
    let mut v = Validation::new(header.alg);
    v.required_spec_claims.clear();
    v.leeway = 60;
    v.validate_nbf = true;
    if let Some(iss) = &rule.issuer {
        v.set_issuer(&[iss]);
    }
    if rule.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&rule.audiences);
    }
    match jsonwebtoken::decode::<Value>(token, &key, &v) {
        Ok(d) => Ok(d.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::Audience,
            ErrorKind::InvalidIssuer => JwtError::UnknownIssuer,
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                JwtError::Malformed
            }
            _ => JwtError::Signature,
        }),
    }
}

/// Authenticates a request against `rules`: Ok(None) without a token, Ok(Some) with a valid one,
/// Err with an invalid one (or one whose issuer no rule names).
pub fn authenticate(
    rules: &[&JwtRule],
    headers: &HeaderMap,
    query: &str,
    keys: &KeyCache,
    remote: Remote<'_>,
) -> Result<Option<Authenticated>, JwtError> {
    // Every token found anywhere a rule looks must verify, with a rule that looks there and names
    // its issuer: none may reach the application unverified. The first one is the principal.
    let mut found: Vec<(String, TokenSource, Vec<usize>)> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        for (tok, from) in tokens(r, headers, query) {
            match found.iter_mut().find(|(t, ..)| *t == tok) {
                Some((_, _, by)) => by.push(i),
                None => found.push((tok, from, vec![i])),
            }
        }
    }
    let mut first = None;
    for (token, from, by) in found {
        let iss = claimed_issuer(&token).ok_or(JwtError::Malformed)?;
        let rule = by
            .into_iter()
            .find(|i| rules.get(*i).is_some_and(|r| r.issuer.as_deref() == Some(iss.as_str())))
            .ok_or(JwtError::UnknownIssuer)?;
        let claims = verify(&token, rules[rule], keys, remote)?;
        if first.is_none() {
            let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
            first = Some(Authenticated { principal: format!("{iss}/{sub}"), claims, rule, from });
        }
    }
    Ok(first)
}

/// Removes what only a verified token may put into a request (`outputPayloadToHeader`,
/// `outputClaimToHeaders`), so a client cannot forge them; call before authenticating.
pub fn strip_outputs(rules: &[&JwtRule], headers: &mut HeaderMap) {
    for r in rules {
        if let Some(h) = &r.output_payload_to_header {
            headers.remove(h.as_str());
        }
        for c in &r.output_claim_to_headers {
            headers.remove(c.header.as_str());
        }
    }
}

/// Whether the request carries a token where any of `rules` looks.
pub fn token_present(rules: &[&JwtRule], headers: &HeaderMap, query: &str) -> bool {
    rules.iter().any(|r| !tokens(r, headers, query).is_empty())
}

/// Applies a verified token's rule to the request headers: removes the token unless
/// `forwardOriginalToken`, and writes `outputPayloadToHeader` / `outputClaimToHeaders`.
pub fn apply_outputs(rule: &JwtRule, auth: &Authenticated, headers: &mut HeaderMap) {
    use base64::Engine as _;
    if !rule.forward_original_token.unwrap_or(false)
        && let TokenSource::Header(h) = &auth.from
    {
        headers.remove(h.as_str());
    }
    if let Some(h) = &rule.output_payload_to_header
        && let Ok(name) = HeaderName::try_from(h.as_str())
    {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(auth.claims.to_string());
        if let Ok(v) = payload.parse() {
            headers.insert(name, v);
        }
    }
    for c in &rule.output_claim_to_headers {
        let value = match auth.claims.get(&c.claim) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => continue,
        };
        if let (Ok(name), Ok(v)) = (HeaderName::try_from(c.header.as_str()), value.parse()) {
            headers.insert(name, v);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;

    /// An ES256 signing key and its JWKS (`kid` = `k1`), for tests.
    pub(crate) struct Signer {
        key: EncodingKey,
        pub jwks: String,
    }

    impl Signer {
        pub(crate) fn new(kid: &str) -> Signer {
            use base64::Engine as _;
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let raw = kp.public_key_raw(); // 0x04 || x || y
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]})
            .to_string();
            Signer { key: EncodingKey::from_ec_der(&kp.serialize_der()), jwks }
        }

        pub(crate) fn sign(&self, kid: &str, claims: &Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(kid.into());
            jsonwebtoken::encode(&h, claims, &self.key).expect("sign")
        }
    }

    pub(crate) fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn rule(jwks: &str) -> JwtRule {
        JwtRule {
            issuer: Some("https://issuer.example".into()),
            audiences: vec!["shop".into()],
            jwks: Some(jwks.into()),
            ..Default::default()
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().expect("value"));
        h
    }

    /// (row name, token, the principal it authenticates as or why it is refused)
    type Row = (&'static str, String, Result<Option<&'static str>, JwtError>);

    #[test]
    fn tokens_are_verified_with_envoys_answers() {
        let s = Signer::new("k1");
        let other = Signer::new("k1");
        let r = rule(&s.jwks);
        let keys = KeyCache::default();
        let ok = serde_json::json!({"iss": "https://issuer.example", "sub": "ann", "aud": "shop", "exp": now() + 600, "groups": ["dev", "ops"]});
        let rows: Vec<Row> = vec![
            ("valid", s.sign("k1", &ok), Ok(Some("https://issuer.example/ann"))),
            ("expired", s.sign("k1", &serde_json::json!({"iss": "https://issuer.example", "sub": "ann", "aud": "shop", "exp": now() - 3600})), Err(JwtError::Expired)),
            ("wrong issuer", s.sign("k1", &serde_json::json!({"iss": "https://evil.example", "sub": "ann", "aud": "shop"})), Err(JwtError::UnknownIssuer)),
            ("wrong audience", s.sign("k1", &serde_json::json!({"iss": "https://issuer.example", "sub": "ann", "aud": "bank"})), Err(JwtError::Audience)),
            ("bad signature", other.sign("k1", &ok), Err(JwtError::Signature)),
            ("unknown kid", s.sign("k9", &ok), Err(JwtError::NoKey)),
            ("garbage", "not-a-jwt".to_string(), Err(JwtError::Malformed)),
        ];
        for (name, token, want) in rows {
            let got =
                authenticate(&[&r], &bearer(&token), "", &keys, &|_| None).map(|a| a.map(|a| a.principal));
            assert_eq!(got.as_ref().map(|p| p.as_deref()), want.as_ref().map(|p| *p), "{name}");
        }
        // No token: unauthenticated, not refused. A token in the default query parameter counts.
        assert_eq!(authenticate(&[&r], &HeaderMap::new(), "", &keys, &|_| None), Ok(None));
        let q = format!("x=1&access_token={}", s.sign("k1", &ok));
        let a = authenticate(&[&r], &HeaderMap::new(), &q, &keys, &|_| None).expect("valid").expect("token");
        assert_eq!(crate::policy::claim_values(&a.claims, &["groups"]), ["dev", "ops"]);
        assert_eq!(a.from, TokenSource::Param("access_token".into()));
    }

    #[test]
    fn every_token_must_verify_and_output_headers_cannot_be_forged() {
        let s = Signer::new("k1");
        let r = rule(&s.jwks);
        let good =
            s.sign("k1", &serde_json::json!({"iss": "https://issuer.example", "sub": "ann", "aud": "shop"}));
        let forged = Signer::new("k1")
            .sign("k1", &serde_json::json!({"iss": "https://issuer.example", "sub": "eve", "aud": "shop"}));
        // A valid header token does not carry an invalid one in the query string along.
        let e = authenticate(
            &[&r],
            &bearer(&good),
            &format!("access_token={forged}"),
            &KeyCache::default(),
            &|_| None,
        );
        assert_eq!(e, Err(JwtError::Signature));
        let mut out = r.clone();
        out.output_payload_to_header = Some("x-jwt-payload".into());
        let mut h = HeaderMap::new();
        h.insert("x-jwt-payload", "forged".parse().expect("value"));
        strip_outputs(&[&out], &mut h);
        assert!(h.get("x-jwt-payload").is_none());
    }

    #[test]
    fn outputs_strip_the_token_and_copy_the_payload() {
        let s = Signer::new("k1");
        let mut r = rule(&s.jwks);
        r.output_payload_to_header = Some("x-jwt-payload".into());
        let claims = serde_json::json!({"iss": "https://issuer.example", "sub": "ann", "aud": "shop"});
        let mut h = bearer(&s.sign("k1", &claims));
        let a = authenticate(&[&r], &h, "", &KeyCache::default(), &|_| None).expect("ok").expect("token");
        apply_outputs(&r, &a, &mut h);
        assert!(h.get("authorization").is_none(), "the token is not forwarded by default");
        assert!(h.get("x-jwt-payload").is_some());
        let remote = JwtRule { jwks: None, jwks_uri: Some("https://issuer.example/jwks".into()), ..rule("") };
        let token = bearer(&s.sign("k1", &claims));
        let e = authenticate(&[&remote], &token, "", &KeyCache::default(), &|_| None);
        assert_eq!(e, Err(JwtError::RemoteJwks), "fails closed without fetched keys");
        let jwks = Arc::new(s.jwks.clone());
        let fetched = |uri: &str| (uri == "https://issuer.example/jwks").then(|| jwks.clone());
        let ok = authenticate(&[&remote], &token, "", &KeyCache::default(), &fetched)
            .expect("fetched keys verify");
        assert_eq!(ok.map(|a| a.principal).as_deref(), Some("https://issuer.example/ann"));
    }
}
