//! Key templates: `"book:{isbn}"`, `"{req.item_id}"`, `"{self.id}"`, `{{`/`}}` for literal braces.
//!
//! A template is parsed from the literal's text alone ([`Template::parse`], string in, message
//! out, never panics), then checked against the fn's parameters ([`Template::check`]) and turned
//! into one `format!` call ([`Template::to_tokens`]). Only parameter names and field paths are
//! allowed inside braces, never arbitrary expressions or format specs: a key is a name, and the
//! rule "it is built from the arguments by `Display`" is the whole story a reader needs.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::Ident;

/// A parsed key template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Text copied into the key as is (braces already unescaped).
    Text(String),
    /// `{root.member.member}`: a parameter (or `self`) and the fields to follow from it.
    Field { root: String, members: Vec<Member> },
}

/// A field step after the root of a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    /// `.item_id`
    Named(String),
    /// `.0` for tuple structs and tuples.
    Index(u32),
}

/// What a template may refer to: the fn's parameter names and its receiver.
pub(crate) struct Params {
    /// Every name bound by the fn's parameter patterns, in order, as written.
    pub(crate) names: Vec<Ident>,
    /// The span of the fn's `self` in any form (`&self`, `&mut self`, `self`,
    /// `self: Arc<Self>`), when it has one.
    pub(crate) receiver: Option<Span>,
}

impl Template {
    /// Parses the template text, unescaping `{{`/`}}` and splitting out placeholders.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err(
                "`key` is empty: name the lock, e.g. `key = \"ranking\"` or \
                        `key = \"book:{isbn}\"`"
                    .to_string(),
            );
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, next)| next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, next)| next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err("unmatched `}` in `key`: write `}}` for a literal brace, \
                                or open a placeholder with `{`"
                        .to_string());
                }
                '{' => {
                    let content_start = start + 1;
                    let mut content_end = None;
                    for (index, inner) in chars.by_ref() {
                        match inner {
                            '}' => {
                                content_end = Some(index);
                                break;
                            }
                            '{' => {
                                return Err(format!(
                                    "`{{` inside the placeholder starting at `{}`: close the \
                                     placeholder with `}}` first, or write `{{{{` for a literal brace",
                                    &text[start..index]
                                ));
                            }
                            _ => {}
                        }
                    }
                    let Some(content_end) = content_end else {
                        return Err(format!(
                            "unclosed `{{` in `key` (at `{}`): close the placeholder, \
                             e.g. `{{isbn}}`, or write `{{{{` for a literal brace",
                            &text[start..]
                        ));
                    };
                    if !literal.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut literal)));
                    }
                    segments.push(parse_placeholder(&text[content_start..content_end])?);
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Text(literal));
        }
        Ok(Self { segments })
    }

    /// Checks that every placeholder names a parameter (or `self`, on a fn that has one).
    pub(crate) fn check(&self, params: &Params) -> Result<(), String> {
        for segment in &self.segments {
            let Segment::Field { root, .. } = segment else {
                continue;
            };
            if root == "self" {
                if params.receiver.is_none() {
                    return Err(format!(
                        "`{{self...}}` needs a `self` receiver, but this fn has none: take \
                         `&self`, or use a parameter instead ({})",
                        list_parameters(params)
                    ));
                }
                continue;
            }
            if !params.names.iter().any(|name| name == root.as_str()) {
                return Err(format!(
                    "`{{{root}}}` in `key` names no parameter of this fn; {}",
                    list_parameters(params)
                ));
            }
        }
        Ok(())
    }

    /// The parameters (or `self`) the placeholders start from, in order, with repeats.
    pub(crate) fn roots(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Field { root, .. } => Some(root.as_str()),
            Segment::Text(_) => None,
        })
    }

    /// The expression building the key: `format!` with one argument per placeholder, or a plain
    /// `String::from` when there is none. Every token is located at `span` (the key literal's),
    /// so a placeholder whose value lacks `Display` or a field that does not exist is reported
    /// at the key. Must be called after [`Template::check`] succeeded.
    pub(crate) fn to_tokens(&self, params: &Params, span: Span) -> TokenStream {
        let mut format = String::new();
        let mut arguments = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => format.push_str(&text.replace('{', "{{").replace('}', "}}")),
                Segment::Field { root, members } => {
                    format.push_str("{}");
                    arguments.push(field_tokens(root, members, params, span));
                }
            }
        }
        let format = syn::LitStr::new(&format, span);
        if arguments.is_empty() {
            quote_spanned!(span=> ::std::string::String::from(#format))
        } else {
            quote_spanned!(span=> ::std::format!(#format, #(#arguments),*))
        }
    }
}

/// Parses the text between `{` and `}` into a field path.
fn parse_placeholder(content: &str) -> Result<Segment, String> {
    if content.is_empty() {
        return Err(
            "empty placeholder `{}` in `key`: name a parameter, e.g. `{id}`, \
                    or write `{{}}` for literal braces"
                .to_string(),
        );
    }
    if content.contains(char::is_whitespace) {
        return Err(format!(
            "`{{{content}}}`: placeholders have no spaces; write `{{{}}}`",
            content.split_whitespace().collect::<String>()
        ));
    }
    if let Some((_, spec)) = content.split_once(':') {
        return Err(format!(
            "`{{{content}}}`: format specs (`:{spec}`) are not supported in `key`; a placeholder \
             inserts a parameter by `Display`, e.g. `{{{}}}`",
            content.split(':').next().unwrap_or_default()
        ));
    }
    let shape_error = || {
        format!(
            "`{{{content}}}` is not a placeholder: write a parameter name, optionally followed by \
             fields, e.g. `{{isbn}}` or `{{req.item_id}}`"
        )
    };
    let mut parts = content.split('.');
    let root = parts.next().unwrap_or_default();
    if root.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{{{content}}}`: placeholders name parameters (e.g. `{{id}}`), not positions"
        ));
    }
    if root != "self" && !is_identifier(root) {
        return Err(shape_error());
    }
    let mut members = Vec::new();
    for part in parts {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            let index = part.parse::<u32>().map_err(|_| shape_error())?;
            members.push(Member::Index(index));
        } else if is_identifier(part) && syn::parse_str::<Ident>(part).is_ok() {
            members.push(Member::Named(part.to_string()));
        } else {
            return Err(shape_error());
        }
    }
    Ok(Segment::Field {
        root: root.to_string(),
        members,
    })
}

/// An ASCII identifier other than `_`. Checked by hand before `syn` ever sees the text, so that
/// arbitrary input never reaches the compiler's lexer.
fn is_identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    text != "_" && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The tail of a "names no parameter" message: what the user can write instead.
fn list_parameters(params: &Params) -> String {
    let mut names: Vec<String> = params
        .names
        .iter()
        .map(|name| format!("`{{{name}}}`"))
        .collect();
    if params.receiver.is_some() {
        names.insert(0, "`{self.<field>}`".to_string());
    }
    if names.is_empty() {
        "this fn has no parameters, so the key must be constant, e.g. `key = \"nightly-report\"`"
            .to_string()
    } else {
        format!("the placeholders available here are {}", names.join(", "))
    }
}

/// `root.member.member`, every token located at `span`. The root keeps the hygiene of the
/// parameter (or `self`) it names and takes only the location of the key: when the key literal
/// and the fn come from different macro contexts (a `macro_rules!` that defines the fn and takes
/// the key as an argument, or the reverse), the literal's hygiene would not see the parameter.
fn field_tokens(root: &str, members: &[Member], params: &Params, span: Span) -> TokenStream {
    let mut tokens = if root == "self" {
        let receiver_span = params.receiver.unwrap_or(span);
        let receiver = syn::token::SelfValue(receiver_span.located_at(span));
        quote!(#receiver)
    } else {
        let mut ident = params
            .names
            .iter()
            .find(|name| *name == root)
            .cloned()
            .unwrap_or_else(|| Ident::new(root, span));
        ident.set_span(ident.span().located_at(span));
        quote!(#ident)
    };
    for member in members {
        let member = match member {
            Member::Named(name) => syn::Member::Named(Ident::new(name, span)),
            Member::Index(index) => syn::Member::Unnamed(syn::Index {
                index: *index,
                span,
            }),
        };
        tokens.extend(quote_spanned!(span=> . #member));
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::{Member, Params, Segment, Template};
    use proc_macro2::Span;

    fn params(names: &[&str], has_receiver: bool) -> Params {
        Params {
            names: names
                .iter()
                .map(|name| syn::Ident::new(name, Span::call_site()))
                .collect(),
            receiver: has_receiver.then(Span::call_site),
        }
    }

    fn field(root: &str, members: &[&str]) -> Segment {
        Segment::Field {
            root: root.to_string(),
            members: members
                .iter()
                .map(|m| match m.parse::<u32>() {
                    Ok(index) => Member::Index(index),
                    Err(_) => Member::Named(m.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn text_and_placeholders_split_in_order() {
        let template = Template::parse("book:{isbn}:{req.item_id}").unwrap();
        assert_eq!(
            template.segments,
            vec![
                Segment::Text("book:".into()),
                field("isbn", &[]),
                Segment::Text(":".into()),
                field("req", &["item_id"]),
            ]
        );
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        let template = Template::parse("a{{b}}c").unwrap();
        assert_eq!(template.segments, vec![Segment::Text("a{b}c".into())]);
    }

    #[test]
    fn self_fields_and_tuple_indices_are_paths() {
        let template = Template::parse("{self.id}-{pair.0}").unwrap();
        assert_eq!(
            template.segments,
            vec![
                field("self", &["id"]),
                Segment::Text("-".into()),
                field("pair", &["0"])
            ]
        );
    }

    #[test]
    fn malformed_templates_name_their_problem() {
        let cases = [
            ("", "empty"),
            ("book:{isbn", "unclosed `{`"),
            ("book:}", "unmatched `}`"),
            ("{}", "empty placeholder"),
            ("{a{b}", "inside the placeholder"),
            ("{ isbn }", "no spaces"),
            ("{isbn:?}", "format specs"),
            ("{0}", "not positions"),
            ("{a.}", "not a placeholder"),
            ("{a..b}", "not a placeholder"),
            ("{a-b}", "not a placeholder"),
            ("{_}", "not a placeholder"),
            ("{req.type}", "not a placeholder"),
        ];
        for (text, expected) in cases {
            let message = Template::parse(text).unwrap_err();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn placeholders_must_name_parameters() {
        let template = Template::parse("{isbn}").unwrap();
        assert!(template.check(&params(&["isbn"], false)).is_ok());
        let message = template.check(&params(&["id", "req"], true)).unwrap_err();
        assert!(message.contains("names no parameter"), "{message}");
        assert!(message.contains("`{id}`, `{req}`"), "{message}");
        assert!(message.contains("`{self.<field>}`"), "{message}");
    }

    #[test]
    fn self_needs_a_receiver() {
        let template = Template::parse("{self.id}").unwrap();
        assert!(template.check(&params(&[], true)).is_ok());
        let message = template.check(&params(&["id"], false)).unwrap_err();
        assert!(message.contains("needs a `self` receiver"), "{message}");
    }

    #[test]
    fn tokens_are_one_format_call() {
        let params = params(&["isbn", "req"], true);
        let template = Template::parse("b{{x}}:{isbn}:{req.item_id}:{self.0}").unwrap();
        let tokens = template.to_tokens(&params, Span::call_site()).to_string();
        assert_eq!(
            tokens,
            ":: std :: format ! (\"b{{x}}:{}:{}:{}\" , isbn , req . item_id , self . 0)"
        );
    }

    #[test]
    fn constant_keys_skip_format() {
        let template = Template::parse("ranking").unwrap();
        let tokens = template
            .to_tokens(&params(&[], false), Span::call_site())
            .to_string();
        assert_eq!(tokens, ":: std :: string :: String :: from (\"ranking\")");
    }

    mod never_panics {
        use super::super::Template;
        use super::params;
        use proc_macro2::Span;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn on_arbitrary_strings(text in any::<String>()) {
                let _ = Template::parse(&text);
            }

            #[test]
            fn on_brace_heavy_strings(text in "[{}a-z_.:0-9 ]{0,24}") {
                if let Ok(template) = Template::parse(&text) {
                    let params = params(&["a", "b_1", "req"], true);
                    if template.check(&params).is_ok() {
                        let _ = template.to_tokens(&params, Span::call_site());
                    }
                }
            }
        }
    }
}
