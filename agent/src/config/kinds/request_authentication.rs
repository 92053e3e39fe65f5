//! Istio's RequestAuthentication (security.istio.io v1/v1beta1): which JWTs a workload accepts,
//! parsed from its `spec` exactly as Istio spells the fields, and the checks Istio's validation
//! performs on it.
//!
//! This module owns the wire shape and its validation; fetching JWKS and verifying tokens belong
//! to the waypoint. Every struct rejects unknown fields: an ignored JWT constraint (say a misspelt
//! `audiences`) would accept tokens the author meant to refuse.
//! It imports only [`super::common`] and the duration type, never another kind nor the compiler.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::common::{Issue, PolicyTargetReference, WorkloadSelector, check_selector_target, join};
use crate::config::duration::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`: one accepted issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    /// Required; an `Option` so that a missing issuer is reported by `validate()` with its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (a JSON document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

/// `JWTHeader`: where to read the token, e.g. `{name: Authorization, prefix: "Bearer "}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `ClaimToHeader`: copy a claim into a request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

fn is_header_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl RequestAuthenticationSpec {
    /// Istio's semantic checks of a RequestAuthentication.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let is = &mut issues;
        check_selector_target(
            is,
            self.selector.is_some(),
            self.target_ref.is_some(),
            !self.target_refs.is_empty(),
        );
        let mut issuers = BTreeSet::new();
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let rp = format!("jwtRules[{i}]");
            match r.issuer.as_deref() {
                None | Some("") => is.push(Issue::error(
                    join(&rp, "issuer"),
                    "a JWT rule needs an issuer",
                    "set issuer to the token's `iss` claim, e.g. https://accounts.google.com",
                )),
                Some(iss) => {
                    if !issuers.insert(iss) {
                        is.push(Issue::warning(
                            join(&rp, "issuer"),
                            format!("issuer `{iss}` has two rules"),
                            "merge the rules of one issuer",
                        ));
                    }
                }
            }
            if r.jwks.is_some() && r.jwks_uri.is_some() {
                is.push(Issue::error(
                    join(&rp, "jwks"),
                    "`jwks` and `jwksUri` are both set",
                    "give the keys inline (jwks) or where to fetch them (jwksUri), not both",
                ));
            }
            if let Some(uri) = &r.jwks_uri {
                check_jwks_uri(is, &join(&rp, "jwksUri"), uri);
            }
            if let Some(jwks) = &r.jwks {
                let keys_ok = serde_json::from_str::<serde_json::Value>(jwks).ok().is_some_and(|v| {
                    v.get("keys").is_some_and(serde_json::Value::is_array) || v.get("kty").is_some()
                });
                if !keys_ok {
                    is.push(Issue::error(
                        join(&rp, "jwks"),
                        "jwks is not a JSON Web Key Set",
                        "paste the JSON document {\"keys\": [...]} the issuer publishes",
                    ));
                }
            }
            for (j, h) in r.from_headers.iter().enumerate() {
                if !is_header_token(&h.name) {
                    is.push(Issue::error(
                        format!("{rp}.fromHeaders[{j}].name"),
                        format!("`{}` is not a header name", h.name),
                        "name the header carrying the token, e.g. Authorization",
                    ));
                }
            }
            for (j, p) in r.from_params.iter().enumerate() {
                if p.is_empty() {
                    is.push(Issue::error(
                        format!("{rp}.fromParams[{j}]"),
                        "query parameter name is empty",
                        "e.g. access_token",
                    ));
                }
            }
            for (j, c) in r.from_cookies.iter().enumerate() {
                if c.is_empty() {
                    is.push(Issue::error(
                        format!("{rp}.fromCookies[{j}]"),
                        "cookie name is empty",
                        "e.g. session",
                    ));
                }
            }
            if let Some(h) = &r.output_payload_to_header
                && !is_header_token(h)
            {
                is.push(Issue::error(
                    join(&rp, "outputPayloadToHeader"),
                    format!("`{h}` is not a header name"),
                    "e.g. x-jwt-payload",
                ));
            }
            let mut out_headers = BTreeSet::new();
            for (j, c) in r.output_claim_to_headers.iter().enumerate() {
                let cp = format!("{rp}.outputClaimToHeaders[{j}]");
                if !is_header_token(&c.header) {
                    is.push(Issue::error(
                        join(&cp, "header"),
                        format!("`{}` is not a header name", c.header),
                        "e.g. x-jwt-sub",
                    ));
                } else if !out_headers.insert(c.header.to_ascii_lowercase()) {
                    is.push(Issue::error(
                        join(&cp, "header"),
                        format!("header `{}` receives two claims", c.header),
                        "copy each claim to its own header",
                    ));
                }
                if c.claim.is_empty() {
                    is.push(Issue::error(join(&cp, "claim"), "claim name is empty", "e.g. sub"));
                }
            }
            if let Some(t) = &r.timeout
                && t.is_zero()
            {
                is.push(Issue::error(
                    join(&rp, "timeout"),
                    "a JWKS fetch timeout of 0 never completes",
                    "use a positive timeout, e.g. 5s",
                ));
            }
        }
        issues
    }
}

fn check_jwks_uri(is: &mut Vec<Issue>, path: &str, uri: &str) {
    let (scheme, rest) = match uri.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => (String::new(), ""),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || (scheme != "https" && scheme != "http") {
        is.push(Issue::error(
            path,
            format!("`{uri}` is not an http(s) URL"),
            "write the JWKS URL, e.g. https://www.googleapis.com/oauth2/v3/certs",
        ));
    } else if scheme == "http" {
        is.push(Issue::warning(
            path,
            format!("`{uri}` fetches signing keys over plain HTTP"),
            "use https so the keys cannot be replaced in transit",
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::kinds::common::IssueSeverity;

    fn example() -> Value {
        json!({
            "selector": {"matchLabels": {"app": "httpbin"}},
            "jwtRules": [{
                "issuer": "issuer-foo",
                "audiences": ["bookstore_android.apps.example.com"],
                "jwksUri": "https://example.com/.well-known/jwks.json",
                "fromHeaders": [{"name": "x-goog-iap-jwt-assertion"}, {"name": "Authorization", "prefix": "Bearer "}],
                "fromParams": ["my_token"],
                "fromCookies": ["session"],
                "outputPayloadToHeader": "x-jwt-payload",
                "forwardOriginalToken": true,
                "outputClaimToHeaders": [{"header": "x-jwt-claim-foo", "claim": "foo"}],
                "timeout": "5s",
                "spaceDelimitedClaims": ["scope"]
            }, {
                "issuer": "issuer-bar",
                "jwks": "{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\",\"n\":\"xyz\"}]}"
            }]
        })
    }

    fn parse(v: Value) -> RequestAuthenticationSpec {
        serde_json::from_value(v).expect("the spec parses")
    }

    fn one(spec: &RequestAuthenticationSpec) -> Issue {
        let issues = spec.validate();
        assert_eq!(issues.len(), 1, "{issues:?}");
        issues.into_iter().next().expect("one issue")
    }

    #[test]
    fn example_parses_validates_and_round_trips() {
        let spec = parse(example());
        assert_eq!(spec.jwt_rules.len(), 2);
        assert_eq!(spec.jwt_rules[0].from_headers[1].prefix.as_deref(), Some("Bearer "));
        assert_eq!(spec.jwt_rules[0].timeout.as_ref().expect("present").as_std().as_secs(), 5);
        assert_eq!(spec.validate(), vec![]);
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), example());
    }

    #[test]
    fn target_refs_round_trip() {
        let v = json!({
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "jwtRules": [{"issuer": "https://issuer.example.com", "jwksUri": "https://issuer.example.com/jwks"}]
        });
        let spec = parse(v.clone());
        assert_eq!(spec.target_refs[0].name, "waypoint");
        assert_eq!(serde_json::to_value(&spec).expect("serializes"), v);
    }

    #[test]
    fn issuer_is_required() {
        let spec = parse(json!({"jwtRules": [{"jwksUri": "https://a.example/jwks"}]}));
        let i = one(&spec);
        assert_eq!(i.path, "jwtRules[0].issuer");
        assert_eq!(i.message, "a JWT rule needs an issuer");
    }

    #[test]
    fn jwks_and_jwks_uri_are_exclusive() {
        let spec = parse(json!({"jwtRules": [{
            "issuer": "a", "jwksUri": "https://a.example/jwks", "jwks": "{\"keys\": []}"
        }]}));
        let i = one(&spec);
        assert_eq!(i.path, "jwtRules[0].jwks");
        assert_eq!(i.message, "`jwks` and `jwksUri` are both set");
    }

    #[test]
    fn jwks_uri_must_be_https_or_warned_http() {
        let spec = parse(json!({"jwtRules": [{"issuer": "a", "jwksUri": "http://a.example/jwks"}]}));
        let i = one(&spec);
        assert_eq!(i.path, "jwtRules[0].jwksUri");
        assert_eq!(i.severity, IssueSeverity::Warning);
        assert!(i.message.contains("plain HTTP"), "{}", i.message);

        let spec = parse(json!({"jwtRules": [{"issuer": "a", "jwksUri": "ftp://a.example/jwks"}]}));
        let i = one(&spec);
        assert_eq!(i.severity, IssueSeverity::Error);
        assert_eq!(i.message, "`ftp://a.example/jwks` is not an http(s) URL");
    }

    #[test]
    fn inline_jwks_must_be_a_key_set() {
        let spec = parse(json!({"jwtRules": [{"issuer": "a", "jwks": "not json"}]}));
        let i = one(&spec);
        assert_eq!(i.path, "jwtRules[0].jwks");
        assert_eq!(i.message, "jwks is not a JSON Web Key Set");
    }

    #[test]
    fn selector_and_target_ref_are_exclusive() {
        let spec = parse(json!({
            "selector": {"matchLabels": {"app": "a"}},
            "targetRef": {"kind": "Service", "name": "a"}
        }));
        let i = one(&spec);
        assert_eq!(i.path, "targetRef");
        assert_eq!(i.message, "`selector` and `targetRef` are both set");
    }

    #[test]
    fn header_names_and_claims_are_checked() {
        let spec = parse(json!({"jwtRules": [{
            "issuer": "a",
            "fromHeaders": [{"name": "bad header"}],
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "X-Sub", "claim": "email"}]
        }]}));
        let issues = spec.validate();
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert_eq!(issues[0].path, "jwtRules[0].fromHeaders[0].name");
        assert_eq!(issues[0].message, "`bad header` is not a header name");
        assert_eq!(issues[1].path, "jwtRules[0].outputClaimToHeaders[1].header");
        assert_eq!(issues[1].message, "header `X-Sub` receives two claims");
    }

    #[test]
    fn zero_timeout_is_an_error() {
        let spec = parse(json!({"jwtRules": [{"issuer": "a", "timeout": "0s"}]}));
        assert_eq!(one(&spec).path, "jwtRules[0].timeout");
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = serde_json::from_value::<RequestAuthenticationSpec>(json!({
            "jwtRules": [{"issuer": "a", "audience": ["x"]}]
        }))
        .expect_err("must be rejected")
        .to_string();
        assert!(err.contains("unknown field `audience`"), "{err}");
        let err = serde_json::from_value::<RequestAuthenticationSpec>(json!({"jwt_rules": []}))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains("unknown field `jwt_rules`"), "{err}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        for bad in [
            json!({"jwtRules": {"issuer": "a"}}),
            json!({"jwtRules": [{"issuer": "a", "audiences": "x"}]}),
            json!({"jwtRules": [{"issuer": "a", "forwardOriginalToken": "yes"}]}),
            json!({"jwtRules": [{"issuer": "a", "timeout": "5 sec"}]}),
        ] {
            assert!(serde_json::from_value::<RequestAuthenticationSpec>(bad.clone()).is_err(), "{bad}");
        }
    }
}
