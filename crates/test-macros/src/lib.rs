//! `#[bpf_test]` marks an integration test that loads BPF programs.
//!
//! Such a test cannot run without root. Outside CI it is skipped with a note,
//! so a developer's `cargo test` as an ordinary user stays green; in CI (the
//! `CI` variable set) the missing privilege fails the test instead, because a
//! BPF test that silently skips in CI is a test that cannot fail. The decision
//! lives in the test crate's `support::bpf_available()`; this attribute only
//! puts the guard at the top of every such test, instead of the same three
//! lines copied into each one.
//!
//! A proc-macro (rather than a `macro_rules!` wrapper) keeps the test body an
//! ordinary function that rustfmt formats. It needs no parser crate: the body
//! is the function's last brace-delimited group.

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Turns `fn name() { body }` into a `#[test]` whose body first returns when
/// `crate::support::bpf_available()` says BPF tests cannot run here.
#[proc_macro_attribute]
pub fn bpf_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[bpf_test] takes no arguments");
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let Some(TokenTree::Group(body)) = tokens.last() else {
        return compile_error("#[bpf_test] goes on a function with a body");
    };
    if body.delimiter() != Delimiter::Brace {
        return compile_error("#[bpf_test] goes on a function with a body");
    }
    let guard: TokenStream =
        "if !crate::support::bpf_available() { return; }".parse().expect("the guard is valid Rust");
    let mut new_body = guard;
    new_body.extend(body.stream());
    let span = body.span();
    let mut group = Group::new(Delimiter::Brace, new_body);
    group.set_span(span);
    let last = tokens.len() - 1;
    tokens[last] = TokenTree::Group(group);
    let mut out: TokenStream = "#[test]".parse().expect("#[test] is valid Rust");
    out.extend(tokens);
    out
}

fn compile_error(msg: &str) -> TokenStream {
    format!("compile_error!({msg:?});").parse().expect("compile_error! is valid Rust")
}
