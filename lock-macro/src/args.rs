//! The attribute's grammar: `key`, `wait`, `lease`, `hold_at_least`, `on_busy`, `on_lost`,
//! `locker`, `crate`, as `name = value` pairs in any order.
//!
//! Parsed by hand (as tracing-attributes does) so that every mistake gets its own message at the
//! token that is wrong: an unknown or repeated argument at its name, a bad value at the value.
//! Checks that need only the arguments (durations, `hold_at_least <= lease`, the key's syntax)
//! happen here; checks against the fn (placeholders, return type) happen in `expand`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitStr, Token};

use crate::duration::{self, UNITS};
use crate::key::Template;

/// Custom keywords, so each argument name is one token with a span to point at.
mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(hold_at_least);
    syn::custom_keyword!(on_busy);
    syn::custom_keyword!(on_lost);
    syn::custom_keyword!(locker);
}

/// Every argument name, in the order the docs list them, for "expected one of" messages.
const ARGUMENTS: &str = "key, wait, lease, hold_at_least, on_busy, on_lost, locker, crate";

/// The parsed attribute. Every field keeps the span of what the user wrote, for later errors.
pub(crate) struct Args {
    /// The key template literal and its parsed form. Required: `None` only until [`Args::parse`] ends.
    pub(crate) key: Option<(LitStr, Template)>,
    /// `wait`: how long to wait for the lock; the runtime's default when absent.
    pub(crate) wait: Option<DurationArg>,
    /// `lease`: a fixed lease; the watchdog when absent.
    pub(crate) lease: Option<DurationArg>,
    /// `hold_at_least`: the minimum time the lock stays taken after the body (ShedLock's lockAtLeastFor).
    pub(crate) hold_at_least: Option<DurationArg>,
    /// `on_busy`, with the span of its value for return-type errors.
    pub(crate) on_busy: Option<(OnBusy, Span)>,
    /// `on_lost`.
    pub(crate) on_lost: Option<(OnLost, Span)>,
    /// `locker = <expr>`: the `Locker` to use instead of the installed default.
    pub(crate) locker: Option<Expr>,
    /// `crate = "path"`: where the facade lives, for crates that re-export it.
    pub(crate) krate: Option<syn::Path>,
}

/// A duration argument: a literal checked now, or an expression the compiler type-checks as `Duration`.
pub(crate) enum DurationArg {
    /// `"10s"`, already converted to milliseconds.
    Literal {
        /// The duration in milliseconds.
        millis: u64,
        /// The literal as written, for spans and messages.
        lit: LitStr,
    },
    /// Any other expression, e.g. a `const` of type `Duration`.
    Expr(Expr),
}

/// What to do when the lock is taken by someone else.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OnBusy {
    /// Return `Err(LockError::NotAcquired { .. }.into())`.
    Error,
    /// Return `()` / `None` without running the body (ShedLock's behaviour).
    Skip,
}

/// What to do when the lease is lost while the body runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OnLost {
    /// Let the body finish, then report the loss.
    Report,
    /// Drop the body as soon as the loss is seen, then report it.
    Cancel,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args {
            key: None,
            wait: None,
            lease: None,
            hold_at_least: None,
            on_busy: None,
            on_lost: None,
            locker: None,
            krate: None,
        };
        while !input.is_empty() {
            args.parse_one(input)?;
            if input.is_empty() {
                break;
            }
            if !input.peek(Token![,]) {
                return Err(input.error("expected `,` between arguments"));
            }
            input.parse::<Token![,]>()?;
        }
        args.check_alone()?;
        Ok(args)
    }
}

impl Args {
    /// Parses one `name = value` pair into its slot.
    fn parse_one(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::key) {
            let name: kw::key = input.parse()?;
            let value = parse_key(equals(input, "key", "\"book:{isbn}\"")?)?;
            set(&mut self.key, value, name.span, "key")
        } else if lookahead.peek(kw::wait) {
            let name: kw::wait = input.parse()?;
            let value = parse_duration(equals(input, "wait", "\"10s\"")?, "wait")?;
            set(&mut self.wait, value, name.span, "wait")
        } else if lookahead.peek(kw::lease) {
            let name: kw::lease = input.parse()?;
            let value = parse_duration(equals(input, "lease", "\"30s\"")?, "lease")?;
            set(&mut self.lease, value, name.span, "lease")
        } else if lookahead.peek(kw::hold_at_least) {
            let name: kw::hold_at_least = input.parse()?;
            let value = parse_duration(equals(input, "hold_at_least", "\"1m\"")?, "hold_at_least")?;
            set(&mut self.hold_at_least, value, name.span, "hold_at_least")
        } else if lookahead.peek(kw::on_busy) {
            let name: kw::on_busy = input.parse()?;
            let value = parse_choice(
                equals(input, "on_busy", "\"skip\"")?,
                "on_busy",
                &[
                    (
                        "error",
                        OnBusy::Error,
                        "return `Err(LockError::NotAcquired)`",
                    ),
                    (
                        "skip",
                        OnBusy::Skip,
                        "return `()`/`None` without running the body",
                    ),
                ],
            )?;
            set(&mut self.on_busy, value, name.span, "on_busy")
        } else if lookahead.peek(kw::on_lost) {
            let name: kw::on_lost = input.parse()?;
            let value = parse_choice(
                equals(input, "on_lost", "\"cancel\"")?,
                "on_lost",
                &[
                    (
                        "report",
                        OnLost::Report,
                        "let the body finish, then report the loss",
                    ),
                    (
                        "cancel",
                        OnLost::Cancel,
                        "stop the body as soon as the loss is seen",
                    ),
                ],
            )?;
            set(&mut self.on_lost, value, name.span, "on_lost")
        } else if lookahead.peek(kw::locker) {
            let name: kw::locker = input.parse()?;
            let value: Expr = equals(input, "locker", "self.locker")?.parse()?;
            set(&mut self.locker, value, name.span, "locker")
        } else if lookahead.peek(Token![crate]) {
            let name: Token![crate] = input.parse()?;
            let value = parse_crate_path(equals(input, "crate", "\"my_crate::lock\"")?)?;
            set(&mut self.krate, value, name.span, "crate")
        } else if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            Err(syn::Error::new(
                lit.span(),
                format!(
                    "arguments are named: write `key = {}`",
                    quote::ToTokens::to_token_stream(&lit)
                ),
            ))
        } else if input.peek(Ident::peek_any) {
            let name = input.call(Ident::parse_any)?;
            Err(syn::Error::new(
                name.span(),
                unknown_argument_message(&name),
            ))
        } else {
            Err(lookahead.error())
        }
    }

    /// Checks that need several arguments but not the fn: `key` present, literal durations
    /// within what the runtime accepts (a `lease` it would refuse on every call is a compile
    /// error instead), `hold_at_least <= lease` when both are literals (expressions are the
    /// runtime's to check).
    fn check_alone(&self) -> syn::Result<()> {
        if self.key.is_none() {
            return Err(syn::Error::new(
                Span::call_site(),
                "missing `key`: every lock needs a name, e.g. \
                 `#[distributed_lock(key = \"book:{isbn}\")]`",
            ));
        }
        for (name, value) in [
            ("wait", &self.wait),
            ("lease", &self.lease),
            ("hold_at_least", &self.hold_at_least),
        ] {
            if let Some(DurationArg::Literal { millis, lit }) = value
                && *millis > duration::MAX_MILLIS
            {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "`{name} = \"{}\"` is longer than a year, the longest {name} a lock \
                         accepts (`distlock::MAX_DURATION`), so every call would fail; check the \
                         unit{}",
                        lit.value(),
                        if name == "lease" {
                            ", or omit `lease` to let the watchdog renew the lock for as long \
                             as the body runs"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        if let Some(DurationArg::Literal { millis: 0, lit }) = &self.lease {
            return Err(syn::Error::new(
                lit.span(),
                "`lease` cannot be zero: the lock would expire as soon as it is taken; give a \
                 lease longer than the body takes, e.g. `lease = \"30s\"`, or omit `lease` to \
                 let the watchdog renew it while the body runs",
            ));
        }
        if let Some(DurationArg::Literal { millis: 0, lit }) = &self.hold_at_least {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "`hold_at_least = \"{}\"` keeps the lock for no time at all, and every call \
                     would fail with it; omit `hold_at_least` to release the lock as soon as the \
                     body ends, or give the minimum time, e.g. `hold_at_least = \"30s\"`",
                    lit.value()
                ),
            ));
        }
        if let (
            Some(DurationArg::Literal {
                millis: lease,
                lit: lease_lit,
            }),
            Some(DurationArg::Literal {
                millis: hold,
                lit: hold_lit,
            }),
        ) = (&self.lease, &self.hold_at_least)
            && hold > lease
        {
            return Err(syn::Error::new(
                hold_lit.span(),
                format!(
                    "`hold_at_least = \"{}\"` is longer than `lease = \"{}\"`: the lock expires \
                     after the lease, so it cannot be held that long; shorten `hold_at_least` \
                     or lengthen `lease`",
                    hold_lit.value(),
                    lease_lit.value()
                ),
            ));
        }
        Ok(())
    }
}

/// Consumes the `=` after an argument name, with a message showing the expected shape.
fn equals<'a>(input: ParseStream<'a>, name: &str, example: &str) -> syn::Result<ParseStream<'a>> {
    if !input.peek(Token![=]) {
        return Err(input.error(format!(
            "expected `=` after `{name}`: write `{name} = {example}`"
        )));
    }
    input.parse::<Token![=]>()?;
    Ok(input)
}

/// Stores an argument, refusing a second occurrence at the second one's name.
fn set<T>(slot: &mut Option<T>, value: T, name_span: Span, name: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            name_span,
            format!("duplicate argument `{name}`: give it once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// `key = "..."`: a string literal, whose template syntax is checked now.
fn parse_key(input: ParseStream<'_>) -> syn::Result<(LitStr, Template)> {
    if !input.peek(LitStr) {
        let value: Expr = input.parse()?;
        return Err(syn::Error::new(
            value.span(),
            "`key` must be a string literal template, e.g. `key = \"book:{isbn}\"`; to lock on \
             a computed value, pass it as a parameter and name it: `key = \"{param}\"`",
        ));
    }
    let lit: LitStr = input.parse()?;
    match Template::parse(&lit.value()) {
        Ok(template) => Ok((lit, template)),
        Err(message) => Err(syn::Error::new(lit.span(), message)),
    }
}

/// A duration: a string literal parsed now, a bare number refused (it has no unit), anything
/// else passed through for the compiler to type-check as `Duration`.
fn parse_duration(input: ParseStream<'_>, name: &str) -> syn::Result<DurationArg> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return match duration::parse_millis(&lit.value()) {
            Ok(millis) => Ok(DurationArg::Literal { millis, lit }),
            Err(message) => Err(syn::Error::new(
                lit.span(),
                format!("invalid `{name}`: {message}"),
            )),
        };
    }
    let expr: Expr = input.parse()?;
    if let Expr::Lit(syn::ExprLit {
        lit: Lit::Int(_) | Lit::Float(_),
        ..
    }) = &expr
    {
        let number = quote::ToTokens::to_token_stream(&expr);
        return Err(syn::Error::new(
            expr.span(),
            format!(
                "`{name} = {number}` has no unit: write a string such as `{name} = \"{number}s\"` \
                 (units: {UNITS}), or pass a `Duration`"
            ),
        ));
    }
    Ok(DurationArg::Expr(expr))
}

/// `on_busy` / `on_lost`: one of a few string values, each listed with its meaning on error.
fn parse_choice<T: Copy>(
    input: ParseStream<'_>,
    name: &str,
    choices: &[(&str, T, &str)],
) -> syn::Result<(T, Span)> {
    let listing = choices
        .iter()
        .map(|(value, _, meaning)| format!("\"{value}\" ({meaning})"))
        .collect::<Vec<_>>()
        .join(" or ");
    if !input.peek(LitStr) {
        let value: Expr = input.parse()?;
        let written = quote::ToTokens::to_token_stream(&value).to_string();
        let hint = if choices.iter().any(|(choice, _, _)| *choice == written) {
            format!("write it as a string: `{name} = \"{written}\"`")
        } else {
            format!("expected {listing}")
        };
        return Err(syn::Error::new(
            value.span(),
            format!("`{name}` takes a string literal; {hint}"),
        ));
    }
    let lit: LitStr = input.parse()?;
    let value = lit.value();
    match choices.iter().find(|(choice, _, _)| *choice == value) {
        Some((_, choice, _)) => Ok((*choice, lit.span())),
        None => Err(syn::Error::new(
            lit.span(),
            format!("unknown `{name}` value \"{value}\": expected {listing}"),
        )),
    }
}

/// `crate = "path"`, as in tokio's macros: a string so that `crate` itself can be written.
fn parse_crate_path(input: ParseStream<'_>) -> syn::Result<syn::Path> {
    if !input.peek(LitStr) {
        let value: Expr = input.parse()?;
        let written = quote::ToTokens::to_token_stream(&value).to_string();
        return Err(syn::Error::new(
            value.span(),
            format!(
                "`crate` takes the path as a string literal: write `crate = \"{}\"`",
                written.replace(' ', "")
            ),
        ));
    }
    let lit: LitStr = input.parse()?;
    lit.parse_with(syn::Path::parse_mod_style).map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!(
                "`crate = \"{}\"` is not a path: write the path to the crate that re-exports \
                 `distlock`, e.g. `crate = \"my_app::lock\"`",
                lit.value()
            ),
        )
    })
}

/// "unknown argument", with the intended one when the name is a known synonym or near miss
/// (the Spring and ShedLock spellings people bring along).
fn unknown_argument_message(name: &Ident) -> String {
    let written = name.to_string();
    let normalized = written.to_ascii_lowercase().replace('_', "");
    let suggestion = match normalized.as_str() {
        "name" | "keys" | "value" | "lockname" | "lockkey" => Some("key"),
        "waittime" | "timeout" | "waitfor" | "waittimeout" => Some("wait"),
        "leasetime" | "ttl" | "expire" | "expiry" | "lockatmostfor" | "leasefor" => Some("lease"),
        "lockatleastfor" | "holdatleast" | "minhold" | "atleast" => Some("hold_at_least"),
        "onbusy" | "busy" | "ifbusy" | "whenbusy" => Some("on_busy"),
        "onlost" | "lost" | "iflost" | "whenlost" => Some("on_lost"),
        "client" | "lockclient" | "redis" | "backend" | "using" => Some("locker"),
        _ => None,
    };
    match suggestion {
        Some(fix) => format!("unknown argument `{written}`: did you mean `{fix}`?"),
        None => format!("unknown argument `{written}`; the arguments are {ARGUMENTS}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{Args, DurationArg, OnBusy, OnLost};

    fn parse(tokens: &str) -> syn::Result<Args> {
        syn::parse_str::<Args>(tokens)
    }

    fn error(tokens: &str) -> String {
        match parse(tokens) {
            Ok(_) => panic!("{tokens} parsed"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn all_arguments_in_any_order() {
        let args = parse(
            r#"crate = "my::lock", on_lost = "cancel", locker = self.locks, hold_at_least = "1s",
               lease = "5s", wait = ONE, on_busy = "skip", key = "k:{id}","#,
        )
        .unwrap();
        assert_eq!(args.key.unwrap().0.value(), "k:{id}");
        assert!(matches!(args.wait, Some(DurationArg::Expr(_))));
        assert!(matches!(
            args.lease,
            Some(DurationArg::Literal { millis: 5000, .. })
        ));
        assert!(matches!(
            args.hold_at_least,
            Some(DurationArg::Literal { millis: 1000, .. })
        ));
        assert_eq!(args.on_busy.unwrap().0, OnBusy::Skip);
        assert_eq!(args.on_lost.unwrap().0, OnLost::Cancel);
        assert!(args.locker.is_some());
        assert_eq!(args.krate.unwrap().segments.len(), 2);
    }

    #[test]
    fn key_alone_is_enough() {
        let args = parse(r#"key = "ranking""#).unwrap();
        assert!(args.wait.is_none() && args.lease.is_none() && args.on_busy.is_none());
    }

    #[test]
    fn misuse_is_named() {
        let cases = [
            ("", "missing `key`"),
            (r#"wait = "1s""#, "missing `key`"),
            (r#""k""#, "arguments are named: write `key = \"k\"`"),
            (r#"key = "a", key = "b""#, "duplicate argument `key`"),
            (r#"key = "a", waitTime = "1s""#, "did you mean `wait`?"),
            (r#"key = "a", colour = 1"#, "unknown argument `colour`"),
            (r#"key = KEY"#, "must be a string literal"),
            (r#"key = "a" wait = "1s""#, "expected `,`"),
            (r#"key "a""#, "expected `=` after `key`"),
            (r#"key = "a", wait = 10"#, "has no unit"),
            (r#"key = "a", wait = "10""#, "invalid `wait`"),
            (r#"key = "a", lease = "0s""#, "`lease` cannot be zero"),
            (r#"key = "a", hold_at_least = "0ms""#, "for no time at all"),
            (r#"key = "a", lease = "366d""#, "longer than a year"),
            (r#"key = "a", wait = "8761h""#, "the longest wait"),
            (
                r#"key = "a", hold_at_least = "366d""#,
                "the longest hold_at_least",
            ),
            (
                r#"key = "a", lease = "5s", hold_at_least = "10s""#,
                "longer than `lease",
            ),
            (r#"key = "a", on_busy = "wait""#, "unknown `on_busy` value"),
            (r#"key = "a", on_busy = skip"#, "`on_busy = \"skip\"`"),
            (r#"key = "a", on_lost = "abort""#, "unknown `on_lost` value"),
            (r#"key = "a", crate = "1x""#, "is not a path"),
            (r#"key = "a", crate = my::path"#, "`crate = \"my::path\"`"),
            (r#"key = "{""#, "unclosed"),
        ];
        for (tokens, expected) in cases {
            let message = error(tokens);
            assert!(message.contains(expected), "{tokens}: {message}");
        }
    }

    #[test]
    fn hold_at_least_equal_to_lease_is_fine() {
        assert!(parse(r#"key = "a", lease = "5s", hold_at_least = "5s""#).is_ok());
        assert!(parse(r#"key = "a", lease = LEASE, hold_at_least = "1h""#).is_ok());
        assert!(parse(r#"key = "a", wait = "0s""#).is_ok());
        assert!(parse(r#"key = "a", lease = "365d", wait = "8760h""#).is_ok());
    }
}
