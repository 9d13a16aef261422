//! The rule condition language: a small typed expression language over named variables
//! (a card's features and the event's fields for the scorer, window metrics for the
//! aggregator), parsed once with a PEG grammar (`grammar.pest`, through `pest` and its
//! Pratt parser), type-checked against the variables and lists in scope, and compiled
//! to a tree that is evaluated without allocating.
//!
//! ```text
//! amount_minor > 50_000 and country not in @home_countries
//! count_1m >= 6 or (new_country and amount_z >= 3.5)
//! declined / count >= 0.4 and count >= 20
//! channel == "ecom" and regex_match(merchant, "^m-9")
//! ```
//!
//! Types are number, boolean and string. `and or not` take booleans; `< <= > >=` and
//! `+ - * / %` take numbers (a division or remainder by zero gives 0); `== !=` take two
//! values of one type; `x in [..]` / `x not in [..]` take a set of literals of x's type,
//! and `x in @name` a declared list whose kind holds x's type (a `bin` list matches a
//! value it is a prefix of). Functions: `abs(n)`, `min(a, b)`, `max(a, b)`, `num(b)`
//! (true is 1, false 0), `regex_match(s, "re")`, `starts_with(s, "prefix")`.

use std::collections::HashSet;
use std::sync::LazyLock;

use pest::Parser;
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use serde::{Deserialize, Serialize};

use crate::lists::{ListKind, ListValues};

mod grammar {
    #![allow(missing_docs)]
    #[derive(pest_derive::Parser)]
    #[grammar = "expr/grammar.pest"]
    pub struct Grammar;
}
use grammar::{Grammar, Rule as G};

/// Longest condition accepted, in bytes.
pub const MAX_CONDITION_LEN: usize = 4096;
/// Deepest nesting of parentheses, brackets and operators accepted.
pub const MAX_DEPTH: usize = 64;
/// Largest compiled regular expression (`regex_match`), bytes.
const REGEX_SIZE_LIMIT: usize = 32 * 1024;
/// Most `not` and unary `-` operators in one condition.
pub const MAX_PREFIX_OPS: usize = 128;

/// A value's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// A number (f64).
    Number,
    /// true or false.
    Bool,
    /// A string.
    Text,
}

impl Type {
    /// The type's name in error messages and the reference.
    pub fn name(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Bool => "boolean",
            Self::Text => "string",
        }
    }
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A variable a condition may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarDef {
    /// Its name in conditions.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// One line for the reference.
    pub doc: &'static str,
    /// For a string with a closed set of values, those values: a literal compared with
    /// it must be one of them (a typo is an error, not a rule that never fires).
    pub values: &'static [&'static str],
}

impl VarDef {
    /// A number variable.
    pub const fn number(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            ty: Type::Number,
            doc,
            values: &[],
        }
    }

    /// A boolean variable.
    pub const fn boolean(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            ty: Type::Bool,
            doc,
            values: &[],
        }
    }

    /// A string variable.
    pub const fn text(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            ty: Type::Text,
            doc,
            values: &[],
        }
    }

    /// A string variable with a closed set of values.
    pub const fn one_of(
        name: &'static str,
        doc: &'static str,
        values: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            ty: Type::Text,
            doc,
            values,
        }
    }
}

/// The type of the values of a list of this kind.
pub fn list_type(kind: ListKind) -> Type {
    match kind {
        ListKind::Mcc => Type::Number,
        _ => Type::Text,
    }
}

/// Where the variables' values come from when a condition is evaluated. Slots are the
/// variables' indices in the table the condition was compiled against, and lists'
/// indices in the declared lists.
pub trait Vars {
    /// A number variable.
    fn number(&self, slot: u16) -> f64;
    /// A boolean variable.
    fn boolean(&self, slot: u16) -> bool;
    /// A string variable.
    fn text(&self, slot: u16) -> &str;
    /// A declared list's values (`None`: empty).
    fn list(&self, slot: u16) -> Option<&ListValues>;
}

/// A value read by a rule, as shown in explanations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    Text(String),
}

impl Value {
    /// The value as a number (booleans as 0 / 1), if it is one.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Self::Text(_) => None,
        }
    }
}

/// Reads a variable's value for an explanation.
pub fn read_var(defs: &[VarDef], slot: u16, v: &impl Vars) -> Value {
    match defs.get(usize::from(slot)).map(|d| d.ty) {
        Some(Type::Number) => Value::Number(v.number(slot)),
        Some(Type::Bool) => Value::Bool(v.boolean(slot)),
        Some(Type::Text) => Value::Text(v.text(slot).to_owned()),
        None => Value::Bool(false),
    }
}

/// A condition that does not parse or type-check: where (line and column in the
/// condition, from 1) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct ExprError {
    /// Byte offset in the condition.
    pub offset: usize,
    /// Line, from 1.
    pub line: usize,
    /// Column (characters), from 1.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    fn at(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            offset,
            line,
            col,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Or,
    And,
    In,
    NotIn,
    Eq,
    Ne,
    Le,
    Ge,
    Lt,
    Gt,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    fn text(self) -> &'static str {
        match self {
            Self::Or => "or",
            Self::And => "and",
            Self::In => "in",
            Self::NotIn => "not in",
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Le => "<=",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Gt => ">",
            Self::Add => "+",
            Self::Sub => "-",
            Self::Mul => "*",
            Self::Div => "/",
            Self::Rem => "%",
        }
    }
}

/// The parsed, untyped tree; `at` is a byte offset in the source (an operator's own
/// position for operators).
#[derive(Debug)]
struct Node {
    at: usize,
    kind: NodeKind,
}

#[derive(Debug)]
enum NodeKind {
    Num(f64),
    Text(String),
    Bool(bool),
    Var(String),
    List(String),
    Set(Vec<Node>),
    Call(String, Vec<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
}

static PRATT: LazyLock<PrattParser<G>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(G::or, Assoc::Left))
        .op(Op::infix(G::and, Assoc::Left))
        .op(Op::prefix(G::not))
        .op(Op::infix(G::eq, Assoc::Left)
            | Op::infix(G::ne, Assoc::Left)
            | Op::infix(G::le, Assoc::Left)
            | Op::infix(G::ge, Assoc::Left)
            | Op::infix(G::lt, Assoc::Left)
            | Op::infix(G::gt, Assoc::Left)
            | Op::infix(G::in_op, Assoc::Left)
            | Op::infix(G::not_in, Assoc::Left))
        .op(Op::infix(G::add, Assoc::Left) | Op::infix(G::sub, Assoc::Left))
        .op(Op::infix(G::mul, Assoc::Left)
            | Op::infix(G::div, Assoc::Left)
            | Op::infix(G::rem, Assoc::Left))
        .op(Op::prefix(G::neg))
});

/// Rejects input nested deeper than [`MAX_DEPTH`] before the recursive parser sees it.
fn check_nesting(src: &str) -> Result<(), ExprError> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ExprError::at(
                        src,
                        i,
                        format!("nested more than {MAX_DEPTH} deep"),
                    ));
                }
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn pest_error(src: &str, e: pest::error::Error<G>) -> ExprError {
    let offset = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let name = |r: &G| match r {
        G::EOI => "the end",
        G::expr | G::condition | G::primary => "a value",
        G::or => "or",
        G::and => "and",
        G::not_in => "not in",
        G::in_op => "in",
        G::not => "not",
        G::eq | G::ne | G::le | G::ge | G::lt | G::gt => "a comparison",
        G::add | G::sub | G::mul | G::div | G::rem | G::infix => "an operator",
        G::neg | G::prefix => "-",
        G::call => "a function call",
        G::set => "a set [..]",
        G::list | G::name => "a list @name",
        G::ident => "a name",
        G::boolean => "true or false",
        G::number => "a number",
        G::string | G::dq_inner | G::sq_inner => "a string",
        G::WHITESPACE | G::word_end | G::keyword => "a space",
    };
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut want: Vec<&str> = Vec::new();
            for r in positives {
                let n = name(r);
                if !want.contains(&n) {
                    want.push(n);
                }
            }
            let found = src
                .get(offset..)
                .and_then(|rest| rest.split_whitespace().next())
                .map_or_else(|| "the end".to_owned(), |w| format!("{w:?}"));
            match want.as_slice() {
                [] => format!("unexpected {found}"),
                [one] => format!("expected {one}, found {found}"),
                [init @ .., last] => {
                    format!("expected {} or {last}, found {found}", init.join(", "))
                }
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    ExprError::at(src, offset, message)
}

fn parse(src: &str) -> Result<Node, ExprError> {
    if src.len() > MAX_CONDITION_LEN {
        return Err(ExprError::at(
            src,
            MAX_CONDITION_LEN,
            format!("longer than {MAX_CONDITION_LEN} bytes"),
        ));
    }
    check_nesting(src)?;
    let mut top = Grammar::parse(G::condition, src).map_err(|e| pest_error(src, e))?;
    // The Pratt parser recurses once for each prefix operator that has an operand with
    // looser operators behind it (`1 + not 1 + not 1 ...`): bound them in the whole
    // condition before it runs.
    if let Some(p) = top
        .clone()
        .flatten()
        .filter(|p| matches!(p.as_rule(), G::not | G::neg))
        .nth(MAX_PREFIX_OPS)
    {
        return Err(ExprError::at(
            src,
            p.as_span().start(),
            format!("more than {MAX_PREFIX_OPS} not / - operators; split the rule"),
        ));
    }
    let expr = top
        .next()
        .and_then(|c| c.into_inner().next())
        .ok_or_else(|| ExprError::at(src, 0, "empty condition"))?;
    let node = build(src, expr.into_inner())?;
    check_depth(src, &node, 0)?;
    Ok(node)
}

/// Longest chain of operators accepted (`not not ... x`, `a or b or ...`): the compiler
/// and the evaluator recurse along it.
const MAX_TREE_DEPTH: usize = 256;

fn check_depth(src: &str, node: &Node, depth: usize) -> Result<(), ExprError> {
    if depth > MAX_TREE_DEPTH {
        return Err(ExprError::at(
            src,
            node.at,
            format!("more than {MAX_TREE_DEPTH} operators deep; split the rule"),
        ));
    }
    match &node.kind {
        NodeKind::Set(xs) | NodeKind::Call(_, xs) => {
            xs.iter().try_for_each(|x| check_depth(src, x, depth + 1))
        }
        NodeKind::Not(x) | NodeKind::Neg(x) => check_depth(src, x, depth + 1),
        NodeKind::Bin(_, a, b) => {
            check_depth(src, a, depth + 1)?;
            check_depth(src, b, depth + 1)
        }
        _ => Ok(()),
    }
}

fn build(src: &str, pairs: Pairs<'_, G>) -> Result<Node, ExprError> {
    // The Pratt parser recurses once per prefix operator: bound a run of them first.
    let mut run = 0usize;
    for p in pairs.clone() {
        if matches!(p.as_rule(), G::not | G::neg) {
            run += 1;
            if run > MAX_DEPTH {
                return Err(ExprError::at(
                    src,
                    p.as_span().start(),
                    format!("more than {MAX_DEPTH} operators deep; split the rule"),
                ));
            }
        } else {
            run = 0;
        }
    }
    PRATT
        .map_primary(|p| primary(src, p))
        .map_prefix(|op, rhs| {
            let at = op.as_span().start();
            let rhs = Box::new(rhs?);
            Ok(Node {
                at,
                kind: match op.as_rule() {
                    G::not => NodeKind::Not(rhs),
                    _ => NodeKind::Neg(rhs),
                },
            })
        })
        .map_infix(|lhs, op, rhs| {
            let at = op.as_span().start();
            let bin = match op.as_rule() {
                G::or => BinOp::Or,
                G::and => BinOp::And,
                G::in_op => BinOp::In,
                G::not_in => BinOp::NotIn,
                G::eq => BinOp::Eq,
                G::ne => BinOp::Ne,
                G::le => BinOp::Le,
                G::ge => BinOp::Ge,
                G::lt => BinOp::Lt,
                G::gt => BinOp::Gt,
                G::add => BinOp::Add,
                G::sub => BinOp::Sub,
                G::mul => BinOp::Mul,
                G::div => BinOp::Div,
                _ => BinOp::Rem,
            };
            Ok(Node {
                at,
                kind: NodeKind::Bin(bin, Box::new(lhs?), Box::new(rhs?)),
            })
        })
        .parse(pairs)
}

/// Resolves `\\`, `\"`, `\'`, `\n` and `\t`; any other backslash is kept as written, so
/// a regular expression reads as it does anywhere else (`'^m\d+$'`, `'a\.b'`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(q @ ('\\' | '"' | '\'')) => out.push(q),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn primary(src: &str, p: Pair<'_, G>) -> Result<Node, ExprError> {
    let at = p.as_span().start();
    let kind = match p.as_rule() {
        G::expr => return build(src, p.into_inner()),
        G::number => {
            let digits: String = p.as_str().chars().filter(|c| *c != '_').collect();
            let n: f64 = digits
                .parse()
                .map_err(|_| ExprError::at(src, at, "not a number"))?;
            if !n.is_finite() {
                return Err(ExprError::at(src, at, "number out of range"));
            }
            NodeKind::Num(n)
        }
        G::string => {
            let inner = p.into_inner().next().map_or("", |i| i.as_str());
            NodeKind::Text(unescape(inner))
        }
        G::boolean => NodeKind::Bool(p.as_str() == "true"),
        G::ident => NodeKind::Var(p.as_str().to_owned()),
        G::list => NodeKind::List(p.as_str().trim_start_matches('@').to_owned()),
        G::set => NodeKind::Set(
            p.into_inner()
                .map(|e| build(src, e.into_inner()))
                .collect::<Result<_, _>>()?,
        ),
        G::call => {
            let mut inner = p.into_inner();
            let name = inner
                .next()
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default();
            let args = inner
                .map(|e| build(src, e.into_inner()))
                .collect::<Result<_, _>>()?;
            NodeKind::Call(name, args)
        }
        other => {
            return Err(ExprError::at(src, at, format!("unexpected {other:?}")));
        }
    };
    Ok(Node { at, kind })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Debug)]
enum Num {
    Const(f64),
    Var(u16),
    Neg(Box<Num>),
    Arith(Arith, Box<Num>, Box<Num>),
    Abs(Box<Num>),
    Min(Box<Num>, Box<Num>),
    Max(Box<Num>, Box<Num>),
    FromBool(Box<Bool>),
}

#[derive(Clone, Debug)]
enum Text {
    Const(Box<str>),
    Var(u16),
}

#[derive(Clone, Debug)]
enum Bool {
    Const(bool),
    Var(u16),
    Not(Box<Bool>),
    And(Box<Bool>, Box<Bool>),
    Or(Box<Bool>, Box<Bool>),
    NumCmp(Cmp, Num, Num),
    TextEq(bool, Text, Text),
    Equal(bool, Box<Bool>, Box<Bool>),
    NumIn(Num, Box<[f64]>, bool),
    TextIn(Text, HashSet<Box<str>>, bool),
    NumInList(Num, u16, bool),
    TextInList(Text, u16, bool, bool),
    Regex(Text, regex_lite::Regex),
    StartsWith(Text, Box<str>),
}

enum Typed {
    N(Num),
    B(Bool),
    T(Text),
}

impl Typed {
    fn ty(&self) -> Type {
        match self {
            Self::N(_) => Type::Number,
            Self::B(_) => Type::Bool,
            Self::T(_) => Type::Text,
        }
    }
}

struct Checker<'a> {
    src: &'a str,
    vars: &'a [VarDef],
    lists: &'a [(String, ListKind)],
    reads: Vec<u16>,
    lists_read: Vec<u16>,
    regexes: usize,
}

fn names(xs: impl Iterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = xs.map(|s| s.as_ref().to_owned()).collect();
    v.join(", ")
}

impl Checker<'_> {
    fn err(&self, at: usize, msg: impl Into<String>) -> ExprError {
        ExprError::at(self.src, at, msg)
    }

    fn num(&mut self, node: &Node, what: &str) -> Result<Num, ExprError> {
        match self.compile(node)? {
            Typed::N(n) => Ok(n),
            t => Err(self.err(
                node.at,
                format!("{what} needs a number, found a {}", t.ty()),
            )),
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Result<Bool, ExprError> {
        match self.compile(node)? {
            Typed::B(b) => Ok(b),
            t => Err(self.err(
                node.at,
                format!("{what} needs a boolean, found a {}", t.ty()),
            )),
        }
    }

    fn text(&mut self, node: &Node, what: &str) -> Result<Text, ExprError> {
        match self.compile(node)? {
            Typed::T(t) => Ok(t),
            t => Err(self.err(
                node.at,
                format!("{what} needs a string, found a {}", t.ty()),
            )),
        }
    }

    /// A string literal compared with a variable of a closed set of values must be one.
    fn check_value(&self, var: &Node, lit: &Node) -> Result<(), ExprError> {
        let (NodeKind::Var(name), NodeKind::Text(value)) = (&var.kind, &lit.kind) else {
            return Ok(());
        };
        let Some(def) = self.vars.iter().find(|d| d.name == name) else {
            return Ok(());
        };
        if def.values.is_empty() || def.values.contains(&value.as_str()) {
            return Ok(());
        }
        Err(self.err(
            lit.at,
            format!(
                "{name} is never {value:?}: it is one of {}",
                names(def.values.iter())
            ),
        ))
    }

    fn compile(&mut self, node: &Node) -> Result<Typed, ExprError> {
        Ok(match &node.kind {
            NodeKind::Num(n) => Typed::N(Num::Const(*n)),
            NodeKind::Text(s) => Typed::T(Text::Const(s.as_str().into())),
            NodeKind::Bool(b) => Typed::B(Bool::Const(*b)),
            NodeKind::Var(name) => {
                let Some(slot) = self.vars.iter().position(|d| d.name == name) else {
                    return Err(self.err(
                        node.at,
                        format!(
                            "unknown name {name:?}; known: {}",
                            names(self.vars.iter().map(|d| d.name))
                        ),
                    ));
                };
                let slot = slot as u16;
                if !self.reads.contains(&slot) {
                    self.reads.push(slot);
                }
                match self.vars[usize::from(slot)].ty {
                    Type::Number => Typed::N(Num::Var(slot)),
                    Type::Bool => Typed::B(Bool::Var(slot)),
                    Type::Text => Typed::T(Text::Var(slot)),
                }
            }
            NodeKind::List(name) => {
                return Err(self.err(
                    node.at,
                    format!("a list (@{name}) can only follow in or not in"),
                ));
            }
            NodeKind::Set(_) => {
                return Err(self.err(node.at, "a set [..] can only follow in or not in"));
            }
            NodeKind::Not(x) => Typed::B(Bool::Not(Box::new(self.boolean(x, "not")?))),
            NodeKind::Neg(x) => Typed::N(Num::Neg(Box::new(self.num(x, "-")?))),
            NodeKind::Call(name, args) => self.call(node, name, args)?,
            NodeKind::Bin(op, l, r) => self.binary(node, *op, l, r)?,
        })
    }

    fn call(&mut self, node: &Node, name: &str, args: &[Node]) -> Result<Typed, ExprError> {
        let arity = |n: usize| -> Result<(), ExprError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(ExprError::at(
                    self.src,
                    node.at,
                    format!("{name}() takes {n} argument(s), given {}", args.len()),
                ))
            }
        };
        Ok(match name {
            "abs" => {
                arity(1)?;
                Typed::N(Num::Abs(Box::new(self.num(&args[0], "abs()")?)))
            }
            "min" | "max" => {
                arity(2)?;
                let a = Box::new(self.num(&args[0], name)?);
                let b = Box::new(self.num(&args[1], name)?);
                Typed::N(if name == "min" {
                    Num::Min(a, b)
                } else {
                    Num::Max(a, b)
                })
            }
            "num" => {
                arity(1)?;
                Typed::N(Num::FromBool(Box::new(self.boolean(&args[0], "num()")?)))
            }
            "regex_match" | "starts_with" => {
                arity(2)?;
                let s = self.text(&args[0], name)?;
                let NodeKind::Text(lit) = &args[1].kind else {
                    return Err(self.err(
                        args[1].at,
                        format!("the second argument of {name}() must be a string literal"),
                    ));
                };
                if name == "starts_with" {
                    Typed::B(Bool::StartsWith(s, lit.as_str().into()))
                } else {
                    let re = regex_lite::RegexBuilder::new(lit)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| {
                            self.err(args[1].at, format!("bad regular expression: {e}"))
                        })?;
                    self.regexes += 1;
                    Typed::B(Bool::Regex(s, re))
                }
            }
            _ => {
                return Err(self.err(
                    node.at,
                    format!(
                        "unknown function {name}(); known: abs, min, max, num, regex_match, starts_with"
                    ),
                ));
            }
        })
    }

    fn binary(&mut self, node: &Node, op: BinOp, l: &Node, r: &Node) -> Result<Typed, ExprError> {
        let what = op.text();
        Ok(match op {
            BinOp::Or | BinOp::And => {
                let a = Box::new(self.boolean(l, what)?);
                let b = Box::new(self.boolean(r, what)?);
                Typed::B(if op == BinOp::And {
                    Bool::And(a, b)
                } else {
                    Bool::Or(a, b)
                })
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                let a = Box::new(self.num(l, what)?);
                let b = Box::new(self.num(r, what)?);
                let arith = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    BinOp::Div => Arith::Div,
                    _ => Arith::Rem,
                };
                Typed::N(Num::Arith(arith, a, b))
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let (a, b) = match (self.compile(l)?, self.compile(r)?) {
                    (Typed::N(a), Typed::N(b)) => (a, b),
                    (a, b) => {
                        return Err(self.err(
                            node.at,
                            format!(
                                "{what} compares numbers; this compares a {} with a {}",
                                a.ty(),
                                b.ty()
                            ),
                        ));
                    }
                };
                let cmp = match op {
                    BinOp::Lt => Cmp::Lt,
                    BinOp::Le => Cmp::Le,
                    BinOp::Gt => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                Typed::B(Bool::NumCmp(cmp, a, b))
            }
            BinOp::Eq | BinOp::Ne => {
                self.check_value(l, r)?;
                self.check_value(r, l)?;
                let a = self.compile(l)?;
                let b = self.compile(r)?;
                let eq = op == BinOp::Eq;
                match (a, b) {
                    (Typed::N(a), Typed::N(b)) => {
                        Typed::B(Bool::NumCmp(if eq { Cmp::Eq } else { Cmp::Ne }, a, b))
                    }
                    (Typed::T(a), Typed::T(b)) => Typed::B(Bool::TextEq(eq, a, b)),
                    (Typed::B(a), Typed::B(b)) => {
                        Typed::B(Bool::Equal(eq, Box::new(a), Box::new(b)))
                    }
                    (a, b) => {
                        return Err(self.err(
                            node.at,
                            format!("cannot compare a {} with a {}", a.ty(), b.ty()),
                        ));
                    }
                }
            }
            BinOp::In | BinOp::NotIn => self.membership(op == BinOp::NotIn, l, r)?,
        })
    }

    fn membership(&mut self, negate: bool, l: &Node, r: &Node) -> Result<Typed, ExprError> {
        let x = self.compile(l)?;
        match &r.kind {
            NodeKind::List(name) => {
                let Some(slot) = self.lists.iter().position(|(n, _)| n == name) else {
                    return Err(self.err(
                        r.at,
                        format!(
                            "unknown list @{name}; declared: {}",
                            if self.lists.is_empty() {
                                "none (declare lists in the rule set's \"lists\")".to_owned()
                            } else {
                                names(self.lists.iter().map(|(n, _)| format!("@{n}")))
                            }
                        ),
                    ));
                };
                let kind = self.lists[slot].1;
                let want = list_type(kind);
                let slot = slot as u16;
                if !self.lists_read.contains(&slot) {
                    self.lists_read.push(slot);
                }
                match x {
                    Typed::N(n) if want == Type::Number => {
                        Ok(Typed::B(Bool::NumInList(n, slot, negate)))
                    }
                    Typed::T(t) if want == Type::Text => Ok(Typed::B(Bool::TextInList(
                        t,
                        slot,
                        kind == ListKind::Bin,
                        negate,
                    ))),
                    x => Err(self.err(
                        r.at,
                        format!(
                            "@{name} is a {kind} list of {want}s; it cannot hold a {}",
                            x.ty()
                        ),
                    )),
                }
            }
            NodeKind::Set(items) => match x {
                Typed::N(n) => {
                    let mut set = Vec::with_capacity(items.len());
                    for it in items {
                        // -0 and 0 are one number (as == says).
                        set.push(self.const_num(it)? + 0.0);
                    }
                    set.sort_by(f64::total_cmp);
                    set.dedup();
                    Ok(Typed::B(Bool::NumIn(n, set.into(), negate)))
                }
                Typed::T(t) => {
                    let mut set = HashSet::with_capacity(items.len());
                    for it in items {
                        let NodeKind::Text(s) = &it.kind else {
                            return Err(self.err(
                                it.at,
                                "a set tested against a string holds string literals only",
                            ));
                        };
                        self.check_value(l, it)?;
                        set.insert(Box::<str>::from(s.as_str()));
                    }
                    Ok(Typed::B(Bool::TextIn(t, set, negate)))
                }
                Typed::B(_) => Err(self.err(l.at, "in tests a number or a string, not a boolean")),
            },
            _ => Err(self.err(
                r.at,
                "in and not in take a set [..] of literals or a list @name",
            )),
        }
    }

    fn const_num(&self, node: &Node) -> Result<f64, ExprError> {
        match &node.kind {
            NodeKind::Num(n) => Ok(*n),
            NodeKind::Neg(x) => match x.kind {
                NodeKind::Num(n) => Ok(-n),
                _ => Err(self.err(node.at, "a set holds literals only")),
            },
            _ => Err(self.err(
                node.at,
                "a set tested against a number holds number literals only",
            )),
        }
    }
}

/// A compiled condition.
#[derive(Clone, Debug)]
pub struct Condition {
    src: Box<str>,
    expr: Bool,
    reads: Box<[u16]>,
    lists: Box<[u16]>,
    regexes: usize,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.src == other.src && self.reads == other.reads && self.lists == other.lists
    }
}

impl Condition {
    /// Parses and type-checks `src` against these variables and declared lists
    /// (name and kind, in slot order). The condition must be a boolean.
    pub fn compile(
        src: &str,
        vars: &[VarDef],
        lists: &[(String, ListKind)],
    ) -> Result<Self, ExprError> {
        let node = parse(src)?;
        let mut c = Checker {
            src,
            vars,
            lists,
            reads: Vec::new(),
            lists_read: Vec::new(),
            regexes: 0,
        };
        let expr = match c.compile(&node)? {
            Typed::B(b) => b,
            t => {
                return Err(ExprError::at(
                    src,
                    node.at,
                    format!("a condition must be true or false; this is a {}", t.ty()),
                ));
            }
        };
        Ok(Self {
            src: src.into(),
            expr,
            reads: c.reads.into(),
            lists: c.lists_read.into(),
            regexes: c.regexes,
        })
    }

    /// The condition's text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// The variables it reads (slots), in the order they first appear.
    pub fn reads(&self) -> &[u16] {
        &self.reads
    }

    /// The lists it tests (slots).
    pub fn lists(&self) -> &[u16] {
        &self.lists
    }

    /// The regular expressions it compiled (a rule set bounds their total).
    pub fn regexes(&self) -> usize {
        self.regexes
    }

    /// Evaluates the condition.
    pub fn eval(&self, v: &impl Vars) -> bool {
        eval_bool(&self.expr, v)
    }
}

fn eval_num(e: &Num, v: &impl Vars) -> f64 {
    match e {
        Num::Const(n) => *n,
        Num::Var(s) => v.number(*s),
        Num::Neg(x) => -eval_num(x, v),
        Num::Arith(op, a, b) => {
            let (a, b) = (eval_num(a, v), eval_num(b, v));
            match op {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                Arith::Div if b == 0.0 => 0.0,
                Arith::Div => a / b,
                Arith::Rem if b == 0.0 => 0.0,
                Arith::Rem => a % b,
            }
        }
        Num::Abs(x) => eval_num(x, v).abs(),
        Num::Min(a, b) => eval_num(a, v).min(eval_num(b, v)),
        Num::Max(a, b) => eval_num(a, v).max(eval_num(b, v)),
        Num::FromBool(b) => {
            if eval_bool(b, v) {
                1.0
            } else {
                0.0
            }
        }
    }
}

fn eval_text<'v>(e: &'v Text, v: &'v impl Vars) -> &'v str {
    match e {
        Text::Const(s) => s,
        Text::Var(s) => v.text(*s),
    }
}

fn eval_bool(e: &Bool, v: &impl Vars) -> bool {
    match e {
        Bool::Const(b) => *b,
        Bool::Var(s) => v.boolean(*s),
        Bool::Not(x) => !eval_bool(x, v),
        Bool::And(a, b) => eval_bool(a, v) && eval_bool(b, v),
        Bool::Or(a, b) => eval_bool(a, v) || eval_bool(b, v),
        Bool::NumCmp(op, a, b) => {
            let (a, b) = (eval_num(a, v), eval_num(b, v));
            match op {
                Cmp::Eq => a == b,
                Cmp::Ne => a != b,
                Cmp::Lt => a < b,
                Cmp::Le => a <= b,
                Cmp::Gt => a > b,
                Cmp::Ge => a >= b,
            }
        }
        Bool::TextEq(eq, a, b) => (eval_text(a, v) == eval_text(b, v)) == *eq,
        Bool::Equal(eq, a, b) => (eval_bool(a, v) == eval_bool(b, v)) == *eq,
        Bool::NumIn(x, set, negate) => {
            let x = eval_num(x, v) + 0.0;
            set.binary_search_by(|p| p.total_cmp(&x)).is_ok() != *negate
        }
        Bool::TextIn(x, set, negate) => set.contains(eval_text(x, v)) != *negate,
        Bool::NumInList(x, list, negate) => {
            let x = eval_num(x, v);
            v.list(*list).is_some_and(|l| l.contains_number(x)) != *negate
        }
        Bool::TextInList(x, list, prefix, negate) => {
            let x = eval_text(x, v);
            v.list(*list).is_some_and(|l| {
                if *prefix {
                    l.contains_prefix_of(x)
                } else {
                    l.contains(x)
                }
            }) != *negate
        }
        Bool::Regex(x, re) => re.is_match(eval_text(x, v)),
        Bool::StartsWith(x, p) => eval_text(x, v).starts_with(&**p),
    }
}

#[cfg(test)]
mod tests;
