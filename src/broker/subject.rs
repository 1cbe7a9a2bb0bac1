//! NATS subject rules: validation, wildcard matching and overlap, shared by every broker.

use super::BrokerError;

/// Whether `subject` (no wildcards) matches `pattern` (`*` one token, `>` one or more trailing
/// tokens), by NATS rules.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match p {
            ">" => return subject_tokens.next().is_some(),
            "*" => {
                if subject_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if subject_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    subject_tokens.next().is_none()
}

/// Whether some subject matches both patterns (NATS refuses streams whose subjects overlap).
pub fn overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) => {
                if *x != "*" && *y != "*" && x != y {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

fn valid_token(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c == '\0')
}

/// Checks a subject to publish on: non-empty tokens, no whitespace, no wildcards.
///
/// # Errors
/// `InvalidArgument` naming the rule broken.
pub fn validate_subject(subject: &str) -> Result<(), BrokerError> {
    for token in subject.split('.') {
        if !valid_token(token) {
            return Err(BrokerError::invalid(format!(
                "subject {subject:?} has an empty token or whitespace"
            )));
        }
        if token == "*" || token == ">" {
            return Err(BrokerError::invalid(format!(
                "subject {subject:?} contains a wildcard; wildcards are only allowed when subscribing"
            )));
        }
    }
    Ok(())
}

/// Checks a subscription pattern: non-empty tokens, no whitespace, `>` only as the last token.
///
/// # Errors
/// `InvalidArgument` naming the rule broken.
pub fn validate_pattern(pattern: &str) -> Result<(), BrokerError> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if !valid_token(token) {
            return Err(BrokerError::invalid(format!(
                "subject pattern {pattern:?} has an empty token or whitespace"
            )));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(BrokerError::invalid(format!(
                "subject pattern {pattern:?} has '>' before its last token"
            )));
        }
    }
    Ok(())
}

/// Checks a stream or bucket name: `[A-Za-z0-9_-]+`.
///
/// # Errors
/// `InvalidArgument`.
pub fn validate_name(kind: &str, name: &str) -> Result<(), BrokerError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(BrokerError::invalid(format!(
            "{kind} name {name:?} must be non-empty and use only A-Z, a-z, 0-9, '_' and '-'"
        )));
    }
    Ok(())
}

/// Checks a KV key by NATS rules: `[-/_=.A-Za-z0-9]+`, not starting or ending with `.`.
///
/// # Errors
/// `InvalidArgument`.
pub fn validate_kv_key(key: &str) -> Result<(), BrokerError> {
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BrokerError::invalid(format!(
            "KV key {key:?} must use only A-Z, a-z, 0-9, '-', '/', '_', '=', '.' and not start or end with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_by_nats_rules() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("*.b.>", "x.b.y"));
        assert!(matches(">", "x"));
    }

    #[test]
    fn overlap_detects_shared_subjects() {
        assert!(overlap("a.>", "a.b"));
        assert!(overlap("a.*", "a.b"));
        assert!(overlap("a.*", "*.b"));
        assert!(!overlap("a.*", "a.b.c"));
        assert!(!overlap("a.b", "a.c"));
        assert!(overlap(">", "x.y"));
        assert!(!overlap("a.b.>", "a.b"));
    }

    #[test]
    fn validation_rejects_bad_subjects() {
        assert!(validate_subject("a.b").is_ok());
        assert!(validate_subject("a..b").is_err());
        assert!(validate_subject("a.*").is_err());
        assert!(validate_subject("a b").is_err());
        assert!(validate_pattern("a.>").is_ok());
        assert!(validate_pattern("a.>.b").is_err());
        assert!(validate_name("stream", "AB_c-1").is_ok());
        assert!(validate_name("stream", "a.b").is_err());
        assert!(validate_kv_key("node.n1").is_ok());
        assert!(validate_kv_key(".n1").is_err());
        assert!(validate_kv_key("a b").is_err());
    }
}
