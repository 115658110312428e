//! The Redis wire format (RESP2) as the pipeline dispatchers speak it on their own
//! connections: commands written straight into the buffer that goes to the socket, and
//! replies read without building a value tree (a decision reply is a list of integers, kept
//! in one flat buffer per round trip).

use std::ops::Range;

/// Longest reply read: a decision reply is a few kilobytes at most, so anything near this
/// is a server that is not speaking to us as we think.
pub(crate) const MAX_REPLY: usize = 16 << 20;

/// Malformed bytes from the server: the connection is out of step and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Redis reply: {0}")]
pub(crate) struct WireError(pub(crate) &'static str);

/// One reply, as much of it as a dispatcher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// An array of integers, at this range of the round trip's integer buffer.
    Integers(Range<usize>),
    /// An error reply's text ("NOSCRIPT ...", "READONLY ...").
    Error(String),
    /// Any other reply (a status, a string, an integer alone, nil, a mixed array), by kind.
    Other(&'static str),
}

impl Reply {
    /// Whether this is an error reply whose code is `code`.
    pub(crate) fn is_error(&self, code: &str) -> bool {
        matches!(self, Reply::Error(text) if text.split(' ').next() == Some(code))
    }
}

/// Appends the head of a command of `args` arguments.
pub(crate) fn command_head(out: &mut Vec<u8>, args: usize) {
    line(out, b'*', args);
}

/// Appends one argument of a command.
pub(crate) fn argument(out: &mut Vec<u8>, arg: &[u8]) {
    line(out, b'$', arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends a whole command.
pub(crate) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    command_head(out, args.len());
    for arg in args {
        argument(out, arg);
    }
}

fn line(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Reads the reply at the start of `input`: `Ok(None)` while it is incomplete, else the reply
/// and the bytes it took. An array of integers is appended to `ints`, which is left as it was
/// for any other reply.
pub(crate) fn parse(
    input: &[u8],
    ints: &mut Vec<i64>,
) -> Result<Option<(Reply, usize)>, WireError> {
    let Some((kind, head, mut at)) = header(input, 0)? else {
        return Ok(None);
    };
    let reply = match kind {
        b'-' => Reply::Error(String::from_utf8_lossy(head).into_owned()),
        b'+' => Reply::Other("status"),
        b':' => {
            number(head)?;
            Reply::Other("integer")
        }
        b'$' => match skip_bulk(input, head, at)? {
            Some(end) => {
                at = end;
                Reply::Other("string")
            }
            None => return Ok(None),
        },
        b'*' => {
            let Some(count) = length(head)? else {
                return Ok(Some((Reply::Other("nil"), at)));
            };
            let start = ints.len();
            let mut only_integers = true;
            for _ in 0..count {
                let element = match header(input, at)? {
                    Some((b':', head, end)) if only_integers => {
                        ints.push(number(head)?);
                        Some(end)
                    }
                    Some(_) => {
                        only_integers = false;
                        skip(input, at, 1)?
                    }
                    None => None,
                };
                match element {
                    Some(end) => at = end,
                    None => {
                        ints.truncate(start);
                        return Ok(None);
                    }
                }
            }
            if only_integers {
                Reply::Integers(start..ints.len())
            } else {
                ints.truncate(start);
                Reply::Other("mixed array")
            }
        }
        _ => return Err(WireError("unknown reply type")),
    };
    Ok(Some((reply, at)))
}

/// Most nesting skipped in a reply that is not one the dispatcher reads.
const MAX_DEPTH: usize = 8;

/// The end of the value at `at`, whatever it is, if complete.
fn skip(input: &[u8], at: usize, depth: usize) -> Result<Option<usize>, WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError("reply nested too deep"));
    }
    let Some((kind, head, mut at)) = header(input, at)? else {
        return Ok(None);
    };
    match kind {
        b'-' | b'+' => Ok(Some(at)),
        b':' => number(head).map(|_| Some(at)),
        b'$' => skip_bulk(input, head, at),
        b'*' => {
            for _ in 0..length(head)?.unwrap_or(0) {
                match skip(input, at, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(WireError("unknown reply type")),
    }
}

/// The end of a bulk string whose length line is `head` and whose body starts at `at`.
fn skip_bulk(input: &[u8], head: &[u8], at: usize) -> Result<Option<usize>, WireError> {
    let Some(len) = length(head)? else {
        return Ok(Some(at)); // nil
    };
    let end = at + len + 2;
    if input.len() < end {
        return Ok(None);
    }
    if &input[end - 2..end] != b"\r\n" {
        return Err(WireError("string without its line end"));
    }
    Ok(Some(end))
}

/// The type byte and the rest of the line at `at`, and where the next line starts.
type Header<'a> = (u8, &'a [u8], usize);

fn header(input: &[u8], at: usize) -> Result<Option<Header<'_>>, WireError> {
    let rest = &input[at.min(input.len())..];
    let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > MAX_REPLY {
            return Err(WireError("line too long"));
        }
        return Ok(None);
    };
    if newline == 0 || rest[newline - 1] != b'\r' {
        return Err(WireError("line not ended by CRLF"));
    }
    Ok(Some((rest[0], &rest[1..newline - 1], at + newline + 1)))
}

/// A length line: `None` for -1 (nil); bounded by [`MAX_REPLY`].
fn length(head: &[u8]) -> Result<Option<usize>, WireError> {
    match number(head)? {
        -1 => Ok(None),
        n if (0..=MAX_REPLY as i64).contains(&n) => Ok(Some(n as usize)),
        _ => Err(WireError("bad length")),
    }
}

fn number(digits: &[u8]) -> Result<i64, WireError> {
    let (negative, digits) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return Err(WireError("empty number"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(WireError("not a number"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or(WireError("number out of range"))?;
    }
    Ok(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Option<(Reply, usize)>, WireError> {
        parse(input, &mut Vec::new())
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn integer_arrays_land_in_the_shared_buffer() {
        let mut ints = vec![7];
        let input = b"*3\r\n:1\r\n:-20\r\n:9223372036854775807\r\n*0\r\n";
        let (reply, used) = parse(input, &mut ints).unwrap().unwrap();
        assert_eq!(reply, Reply::Integers(1..4));
        assert_eq!(ints, [7, 1, -20, i64::MAX]);
        let (reply, rest) = parse(&input[used..], &mut ints).unwrap().unwrap();
        assert_eq!((reply, used + rest), (Reply::Integers(4..4), input.len()));
    }

    #[test]
    fn other_replies_are_read_whole_and_leave_the_integers_alone() {
        let cases: [(&[u8], Reply); 7] = [
            (b"+OK\r\n", Reply::Other("status")),
            (
                b"-NOSCRIPT No matching script\r\n",
                Reply::Error("NOSCRIPT No matching script".into()),
            ),
            (b":5\r\n", Reply::Other("integer")),
            (b"$5\r\nab\r\nc\r\n", Reply::Other("string")),
            (b"$-1\r\n", Reply::Other("string")),
            (b"*-1\r\n", Reply::Other("nil")),
            (
                b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n:2\r\n+y\r\n",
                Reply::Other("mixed array"),
            ),
        ];
        for (input, expected) in cases {
            let mut ints = vec![1];
            let (reply, used) = parse(input, &mut ints).unwrap().unwrap();
            assert_eq!((reply, used), (expected, input.len()), "{input:?}");
            assert_eq!(ints, [1]);
        }
        assert!(Reply::Error("READONLY You can't write".into()).is_error("READONLY"));
        assert!(!Reply::Error("READONLYX".into()).is_error("READONLY"));
    }

    #[test]
    fn an_incomplete_reply_asks_for_more_and_keeps_nothing() {
        let whole: &[u8] = b"*2\r\n:1\r\n*1\r\n$3\r\nabc\r\n";
        for cut in 0..whole.len() {
            let mut ints = Vec::new();
            assert_eq!(parse(&whole[..cut], &mut ints), Ok(None), "cut at {cut}");
            assert!(ints.is_empty());
        }
        let mut ints = Vec::new();
        assert_eq!(parse(b"*2\r\n:1\r\n:2", &mut ints), Ok(None));
        assert!(ints.is_empty());
    }

    #[test]
    fn malformed_bytes_are_errors_not_guesses() {
        let bad: [&[u8]; 8] = [
            b"?x\r\n",
            b":12a\r\n",
            b":\r\n",
            b"+OK\n",
            b"$3\r\nabcd\r\n",
            b"*-2\r\n",
            b":99999999999999999999\r\n",
            b"$99999999999\r\n",
        ];
        for input in bad {
            assert!(one(input).is_err(), "{input:?}");
        }
        let mut nested = b"*2\r\n:1\r\n".to_vec();
        nested.extend("*1\r\n".repeat(MAX_DEPTH + 2).as_bytes());
        nested.extend(b":1\r\n");
        assert!(one(&nested).is_err());
    }
}
