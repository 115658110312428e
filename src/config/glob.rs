//! Wildcard values: each `*` matches any run of characters, everything else itself.

/// Whether `text` matches `pattern`, where each `*` matches any (possibly empty) run of
/// characters. Linear in practice: on a mismatch only the last `*` is retried further on.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position after the last '*' seen, and the text position it is currently matched up to.
    let mut retry: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            pi += 1;
            retry = Some((pi, ti));
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_p, star_t)) = retry {
            // Let the last '*' swallow one more byte and try again from there.
            pi = star_p;
            ti = star_t + 1;
            retry = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("foo*", "foo", true),
            ("foo*", "foobar", true),
            ("foo*", "fo", false),
            ("*bar", "foobar", true),
            ("*bar", "barfoo", false),
            ("a*c", "abc", true),
            ("a*c", "ac", true),
            ("a*c", "abcd", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxcyyb", false),
            ("/api/*/users", "/api/v1/users", true),
            ("/api/*/users", "/api/v1/orders", false),
            ("**", "x", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("é*", "été", true),
            ("*ß", "straße", false),
            ("*ße", "straße", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern} vs {text}");
        }
    }
}
