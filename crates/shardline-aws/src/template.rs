//! Reads `template.yaml` (the one source of resource names, keys and event source
//! mapping settings) and resolves the intrinsic functions that matter locally: `Ref`,
//! `Fn::Sub`, `Fn::GetAtt`, `Fn::If` / `Fn::Equals`, parameters with their defaults and
//! the pseudo parameters. The template uses the long form of intrinsics, so a plain YAML
//! parser reads it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

/// Region used for ARNs of local resources.
pub const LOCAL_REGION: &str = "us-east-1";
/// Account id used for ARNs of local resources.
pub const LOCAL_ACCOUNT: &str = "000000000000";

/// A template problem.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML.
    #[error("template is not valid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// Something the resolver does not know.
    #[error("template: {0}")]
    Unsupported(String),
}

/// A resource's physical identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Physical {
    /// What `Ref` returns (stream / table name, queue URL, function name).
    pub reference: String,
    /// Its ARN.
    pub arn: String,
}

/// A parsed template with parameter values and resolved physical names.
#[derive(Clone, Debug)]
pub struct Template {
    raw: Value,
    params: HashMap<String, String>,
    physical: BTreeMap<String, Physical>,
}

fn name_property(ty: &str) -> Option<&'static str> {
    match ty {
        "AWS::Kinesis::Stream" => Some("Name"),
        "AWS::DynamoDB::Table" => Some("TableName"),
        "AWS::SQS::Queue" => Some("QueueName"),
        "AWS::Serverless::Function" => Some("FunctionName"),
        _ => None,
    }
}

fn arn_for(ty: &str, name: &str) -> String {
    match ty {
        "AWS::Kinesis::Stream" => {
            format!("arn:aws:kinesis:{LOCAL_REGION}:{LOCAL_ACCOUNT}:stream/{name}")
        }
        "AWS::DynamoDB::Table" => {
            format!("arn:aws:dynamodb:{LOCAL_REGION}:{LOCAL_ACCOUNT}:table/{name}")
        }
        "AWS::SQS::Queue" => format!("arn:aws:sqs:{LOCAL_REGION}:{LOCAL_ACCOUNT}:{name}"),
        _ => format!("arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{name}"),
    }
}

impl Template {
    /// Reads and parses a template file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TemplateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses template text, taking every parameter's default.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let raw: Value = serde_norway::from_str(text)?;
        let mut params = HashMap::new();
        if let Some(ps) = raw.get("Parameters").and_then(Value::as_object) {
            for (k, v) in ps {
                if let Some(d) = v.get("Default") {
                    params.insert(k.clone(), scalar(d));
                }
            }
        }
        let mut t = Self {
            raw,
            params,
            physical: BTreeMap::new(),
        };
        t.compute_physical()?;
        Ok(t)
    }

    /// Overrides a parameter.
    pub fn set_param(&mut self, name: &str, value: &str) -> Result<(), TemplateError> {
        self.params.insert(name.to_owned(), value.to_owned());
        self.compute_physical()
    }

    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Sets what `Ref` of a resource returns (a queue's URL once it exists).
    pub fn set_reference(&mut self, logical: &str, reference: String) {
        if let Some(p) = self.physical.get_mut(logical) {
            p.reference = reference;
        }
    }

    /// Sets a resource's ARN as the endpoint reports it (an emulator's account id may
    /// differ from [`LOCAL_ACCOUNT`]).
    pub fn set_arn(&mut self, logical: &str, arn: String) {
        if let Some(p) = self.physical.get_mut(logical) {
            p.arn = arn;
        }
    }

    /// Physical identities of the named resources.
    pub fn physical(&self) -> &BTreeMap<String, Physical> {
        &self.physical
    }

    /// The raw template.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// Resources of a type: (logical id, resolved properties).
    pub fn resources_of_type(&self, ty: &str) -> Vec<(String, Value)> {
        let Some(res) = self.raw.get("Resources").and_then(Value::as_object) else {
            return Vec::new();
        };
        res.iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(ty))
            .filter(|(_, r)| self.included(r))
            .map(|(k, r)| {
                (
                    k.clone(),
                    self.resolve(r.get("Properties").unwrap_or(&Value::Null)),
                )
            })
            .collect()
    }

    /// The logical id of a resource.
    pub fn resource(&self, logical: &str) -> Option<&Value> {
        self.raw.get("Resources").and_then(|r| r.get(logical))
    }

    fn compute_physical(&mut self) -> Result<(), TemplateError> {
        let mut physical = BTreeMap::new();
        let resources = self
            .raw
            .get("Resources")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (logical, r) in &resources {
            let ty = r.get("Type").and_then(Value::as_str).unwrap_or_default();
            let Some(prop) = name_property(ty) else {
                continue;
            };
            let name = match r.get("Properties").and_then(|p| p.get(prop)) {
                Some(v) => scalar(&self.resolve(v)),
                None => logical.clone(),
            };
            // A queue's URL and ARN, once the endpoint has told them, are kept.
            let known = self
                .physical
                .get(logical)
                .filter(|p| ty == "AWS::SQS::Queue" && p.reference.starts_with("http"))
                .cloned();
            let p = known.unwrap_or_else(|| Physical {
                reference: name.clone(),
                arn: arn_for(ty, &name),
            });
            physical.insert(logical.clone(), p);
        }
        self.physical = physical;
        Ok(())
    }

    /// False for a resource whose `Condition` is false (it is not created).
    fn included(&self, resource: &Value) -> bool {
        resource
            .get("Condition")
            .and_then(Value::as_str)
            .is_none_or(|c| self.condition(c))
    }

    fn condition(&self, name: &str) -> bool {
        let cond = self
            .raw
            .get("Conditions")
            .and_then(|c| c.get(name))
            .cloned()
            .unwrap_or(Value::Bool(false));
        truthy(&self.resolve(&cond))
    }

    /// Resolves intrinsic functions in a value.
    pub fn resolve(&self, v: &Value) -> Value {
        match v {
            Value::Object(m) if m.len() == 1 => {
                let (k, arg) = m.iter().next().expect("one entry");
                match k.as_str() {
                    "Ref" => self.reference(arg.as_str().unwrap_or_default()),
                    "Fn::Sub" => Value::String(self.sub(arg)),
                    "Fn::GetAtt" => {
                        let parts: Vec<String> = match arg {
                            Value::Array(a) => a.iter().map(scalar).collect(),
                            other => scalar(other).splitn(2, '.').map(str::to_owned).collect(),
                        };
                        Value::String(self.get_att(
                            parts.first().map_or("", String::as_str),
                            parts.get(1).map_or("", String::as_str),
                        ))
                    }
                    "Fn::If" => {
                        let a = arg.as_array().cloned().unwrap_or_default();
                        let chosen = if self
                            .condition(a.first().and_then(Value::as_str).unwrap_or_default())
                        {
                            a.get(1)
                        } else {
                            a.get(2)
                        };
                        chosen.map(|c| self.resolve(c)).unwrap_or(Value::Null)
                    }
                    "Fn::Equals" => {
                        let a = arg.as_array().cloned().unwrap_or_default();
                        let vals: Vec<String> =
                            a.iter().map(|x| scalar(&self.resolve(x))).collect();
                        Value::Bool(vals.len() == 2 && vals[0] == vals[1])
                    }
                    _ => Value::Object(Map::from_iter([(k.clone(), self.resolve(arg))])),
                }
            }
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.resolve(x)))
                    .filter(|(_, x)| !is_no_value(x))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.resolve(x))
                    .filter(|x| !is_no_value(x))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn reference(&self, name: &str) -> Value {
        match name {
            "AWS::Region" => Value::String(LOCAL_REGION.into()),
            "AWS::AccountId" => Value::String(LOCAL_ACCOUNT.into()),
            "AWS::StackName" => Value::String(format!(
                "shardline-{}",
                self.param("Stage").unwrap_or("dev")
            )),
            "AWS::Partition" => Value::String("aws".into()),
            "AWS::NoValue" => Value::String(NO_VALUE.into()),
            _ => {
                if let Some(p) = self.params.get(name) {
                    return Value::String(p.clone());
                }
                Value::String(
                    self.physical
                        .get(name)
                        .map(|p| p.reference.clone())
                        .unwrap_or_else(|| name.to_owned()),
                )
            }
        }
    }

    fn get_att(&self, logical: &str, attr: &str) -> String {
        let p = self.physical.get(logical).cloned().unwrap_or_default();
        match attr {
            "Arn" => p.arn,
            "QueueName" | "StreamName" => p
                .arn
                .rsplit([':', '/'])
                .next()
                .unwrap_or_default()
                .to_owned(),
            "QueueUrl" => p.reference,
            _ => format!("{logical}.{attr}"),
        }
    }

    fn sub(&self, arg: &Value) -> String {
        let (text, vars) = match arg {
            Value::Array(a) => (
                a.first().map(scalar).unwrap_or_default(),
                a.get(1)
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            ),
            other => (scalar(other), Map::new()),
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let var = &rest[start + 2..start + end];
            let value = if let Some(v) = vars.get(var) {
                scalar(&self.resolve(v))
            } else if let Some((logical, attr)) = var.split_once('.') {
                self.get_att(logical, attr)
            } else {
                scalar(&self.reference(var))
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out
    }
}

const NO_VALUE: &str = "\u{0}AWS::NoValue";

fn is_no_value(v: &Value) -> bool {
    v.as_str() == Some(NO_VALUE)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s == "true",
        _ => false,
    }
}

/// A scalar as a string (numbers and booleans too).
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A function of the template: its binary and what it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSpec {
    /// Logical id.
    pub logical_id: String,
    /// Physical name.
    pub name: String,
    /// Cargo binary (`Metadata.BuildProperties.Binary`).
    pub binary: String,
    /// Resolved environment variables.
    pub environment: BTreeMap<String, String>,
    /// Its Kinesis event source mappings (resolved properties).
    pub kinesis_events: Vec<Value>,
    /// IAM statements (resolved).
    pub statements: Vec<Value>,
}

impl Template {
    /// Every `AWS::Serverless::Function`, resolved, with `Globals.Function` applied to
    /// the environment.
    pub fn functions(&self) -> Vec<FunctionSpec> {
        let Some(res) = self.raw.get("Resources").and_then(Value::as_object) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (logical, r) in res {
            if r.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function")
                || !self.included(r)
            {
                continue;
            }
            let props = self.resolve(r.get("Properties").unwrap_or(&Value::Null));
            let mut environment = BTreeMap::new();
            let globals = self.resolve(
                self.raw
                    .pointer("/Globals/Function/Environment/Variables")
                    .unwrap_or(&Value::Null),
            );
            for vars in [
                &globals,
                props
                    .pointer("/Environment/Variables")
                    .unwrap_or(&Value::Null),
            ] {
                if let Some(m) = vars.as_object() {
                    for (k, v) in m {
                        environment.insert(k.clone(), scalar(v));
                    }
                }
            }
            let kinesis_events = props
                .get("Events")
                .and_then(Value::as_object)
                .map(|evs| {
                    evs.values()
                        .filter(|e| e.get("Type").and_then(Value::as_str) == Some("Kinesis"))
                        .filter_map(|e| e.get("Properties").cloned())
                        .collect()
                })
                .unwrap_or_default();
            // Statements of SAM `Policies`, and of the IAM role named by `Role`.
            let mut statements: Vec<Value> = props
                .get("Policies")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p.get("Statement").and_then(Value::as_array))
                        .flatten()
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let role = r
                .pointer("/Properties/Role/Fn::GetAtt/0")
                .and_then(Value::as_str);
            if let Some(role) = role.and_then(|l| self.resource(l)) {
                let policies =
                    self.resolve(role.pointer("/Properties/Policies").unwrap_or(&Value::Null));
                for p in policies.as_array().into_iter().flatten() {
                    statements.extend(
                        p.pointer("/PolicyDocument/Statement")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .cloned(),
                    );
                }
            }
            out.push(FunctionSpec {
                logical_id: logical.clone(),
                name: self
                    .physical
                    .get(logical)
                    .map(|p| p.reference.clone())
                    .unwrap_or_else(|| logical.clone()),
                binary: r
                    .pointer("/Metadata/BuildProperties/Binary")
                    .map(scalar)
                    .unwrap_or_default(),
                environment,
                kinesis_events,
                statements,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_template() -> Template {
        Template::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml")).unwrap()
    }

    #[test]
    fn resolves_names_from_parameters() {
        let mut t = repo_template();
        assert_eq!(t.physical()["InputStream"].reference, "shardline-dev-input");
        t.set_param("Stage", "ci").unwrap();
        assert_eq!(
            t.physical()["ProfilesTable"].reference,
            "shardline-ci-profiles"
        );
        assert_eq!(
            t.physical()["ProfilesTable"].arn,
            "arn:aws:dynamodb:us-east-1:000000000000:table/shardline-ci-profiles"
        );
    }

    #[test]
    fn function_environment_and_mapping_are_resolved() {
        let mut t = repo_template();
        t.set_reference(
            "QuarantineQueue",
            "http://127.0.0.1:4566/000000000000/shardline-dev-quarantine".into(),
        );
        let f = t
            .functions()
            .into_iter()
            .find(|f| f.binary == "fraud-scorer")
            .unwrap();
        assert_eq!(f.environment["PROFILES_TABLE"], "shardline-dev-profiles");
        assert_eq!(f.environment["ALERT_THRESHOLD"], "600");
        assert!(f.environment["QUARANTINE_QUEUE_URL"].starts_with("http://"));
        let esm = &f.kinesis_events[0];
        assert_eq!(
            esm["Stream"],
            "arn:aws:kinesis:us-east-1:000000000000:stream/shardline-dev-input"
        );
        assert_eq!(esm["FunctionResponseTypes"][0], "ReportBatchItemFailures");
    }

    #[test]
    fn if_and_no_value_drop_the_property() {
        let t = repo_template();
        let (_, s) = t
            .resources_of_type("AWS::Kinesis::Stream")
            .into_iter()
            .next()
            .unwrap();
        assert!(s.get("ShardCount").is_none(), "on-demand by default");
        let mut t = t;
        t.set_param("StreamMode", "PROVISIONED").unwrap();
        let (_, s) = t
            .resources_of_type("AWS::Kinesis::Stream")
            .into_iter()
            .next()
            .unwrap();
        assert_eq!(s["ShardCount"], "4");
    }

    /// The record archive's delivery role can do exactly what Firehose does and nothing
    /// else, on exactly the input stream, the archive bucket and its own log stream.
    #[test]
    fn archive_delivery_role_is_least_privilege() {
        use serde_json::json;
        let mut t = repo_template();
        t.set_param("ArchiveRecords", "true").unwrap();
        let role = t
            .resource("ArchiveDeliveryRole")
            .expect("ArchiveDeliveryRole");
        assert_eq!(role["Condition"], "HasArchive");
        let trust = role
            .pointer("/Properties/AssumeRolePolicyDocument/Statement")
            .and_then(Value::as_array)
            .unwrap();
        assert_eq!(trust.len(), 1);
        assert_eq!(
            trust[0]["Principal"],
            json!({"Service": "firehose.amazonaws.com"})
        );
        assert_eq!(trust[0]["Action"], "sts:AssumeRole");
        assert_eq!(
            trust[0]["Condition"],
            json!({"StringEquals": {"sts:ExternalId": {"Ref": "AWS::AccountId"}}})
        );

        let raw: Vec<Value> = role
            .pointer("/Properties/Policies")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .flat_map(|p| {
                p.pointer("/PolicyDocument/Statement")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let actions_on = |resource: &Value| -> Vec<String> {
            let mut a: Vec<String> = raw
                .iter()
                .filter(|s| &s["Resource"] == resource)
                .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
                .map(|a| scalar(&a))
                .collect();
            a.sort();
            a
        };
        for s in &raw {
            assert_eq!(s["Effect"], "Allow", "{s}");
            assert!(s.get("NotAction").is_none() && s.get("NotResource").is_none());
        }
        assert_eq!(
            actions_on(&json!({"Fn::GetAtt": ["InputStream", "Arn"]})),
            [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards"
            ]
        );
        assert_eq!(
            actions_on(&json!([
                {"Fn::GetAtt": ["ArchiveBucket", "Arn"]},
                {"Fn::Sub": "${ArchiveBucket.Arn}/*"}
            ])),
            [
                "s3:AbortMultipartUpload",
                "s3:GetBucketLocation",
                "s3:GetObject",
                "s3:ListBucket",
                "s3:ListBucketMultipartUploads",
                "s3:PutObject"
            ]
        );
        // The logging statement names the delivery stream's own log group and stream.
        let (_, group) = t
            .resources_of_type("AWS::Logs::LogGroup")
            .into_iter()
            .find(|(l, _)| l == "ArchiveDeliveryLogGroup")
            .unwrap();
        let (_, stream) = t
            .resources_of_type("AWS::Logs::LogStream")
            .into_iter()
            .find(|(l, _)| l == "ArchiveDeliveryLogStream")
            .unwrap();
        let logs_arn = format!(
            "arn:aws:logs:{LOCAL_REGION}:{LOCAL_ACCOUNT}:log-group:{}:log-stream:{}",
            scalar(&group["LogGroupName"]),
            scalar(&stream["LogStreamName"])
        );
        let logs: Vec<&Value> = raw
            .iter()
            .filter(|s| scalar(&t.resolve(&s["Resource"])) == logs_arn)
            .collect();
        assert_eq!(logs.len(), 1, "one statement on {logs_arn}");
        assert_eq!(logs[0]["Action"], json!(["logs:PutLogEvents"]));
        assert_eq!(raw.len(), 3, "no other statement");
    }

    /// The delivery stream writes what `shardline backtest` reads: gzip NDJSON under
    /// archive/, errors elsewhere; with ArchiveRecords=false (the default) none of it
    /// exists.
    #[test]
    fn archive_delivery_stream_and_its_switch() {
        let mut t = repo_template();
        assert!(
            t.resources_of_type("AWS::KinesisFirehose::DeliveryStream")
                .is_empty(),
            "the archive is opt-in"
        );
        t.set_param("ArchiveRecords", "true").unwrap();
        let streams = t.resources_of_type("AWS::KinesisFirehose::DeliveryStream");
        assert_eq!(streams.len(), 1);
        let (_, d) = &streams[0];
        assert_eq!(d["DeliveryStreamType"], "KinesisStreamAsSource");
        assert_eq!(
            scalar(&d["KinesisStreamSourceConfiguration"]["KinesisStreamARN"]),
            t.physical()["InputStream"].arn
        );
        let s3 = &d["ExtendedS3DestinationConfiguration"];
        assert_eq!(s3["CompressionFormat"], "GZIP");
        assert!(scalar(&s3["Prefix"]).starts_with("archive/"));
        assert!(!scalar(&s3["ErrorOutputPrefix"]).starts_with("archive/"));
        assert_eq!(s3["ProcessingConfiguration"]["Enabled"], true);
        assert!(
            s3["ProcessingConfiguration"]["Processors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["Type"] == "AppendDelimiterToRecord")
        );

        t.set_param("ArchiveRecords", "false").unwrap();
        for ty in [
            "AWS::S3::Bucket",
            "AWS::S3::BucketPolicy",
            "AWS::KinesisFirehose::DeliveryStream",
            "AWS::Logs::LogStream",
        ] {
            assert!(
                t.resources_of_type(ty).is_empty(),
                "{ty} without the archive"
            );
        }
        assert!(
            !t.resources_of_type("AWS::IAM::Role")
                .iter()
                .any(|(l, _)| l == "ArchiveDeliveryRole")
        );
    }

    /// Labels are hard to recreate: the table outlives the stack and a replacement.
    #[test]
    fn labels_table_is_retained() {
        let t = repo_template();
        let table = t.resource("LabelsTable").expect("LabelsTable");
        assert_eq!(table["DeletionPolicy"], "Retain");
        assert_eq!(table["UpdateReplacePolicy"], "Retain");
    }

    /// The policy for the people who label can do what `shardline label`, `labels
    /// import`/`export`, `query alerts` and `backtest --baseline live --stored-lists
    /// --labels-table` do, on exactly those tables, and nothing else.
    #[test]
    fn labeller_policy_is_least_privilege() {
        use serde_json::json;
        let t = repo_template();
        let policy = t.resource("LabellerPolicy").expect("LabellerPolicy");
        assert_eq!(policy["Type"], "AWS::IAM::ManagedPolicy");
        let statements = policy
            .pointer("/Properties/PolicyDocument/Statement")
            .and_then(Value::as_array)
            .unwrap();
        let mut granted: Vec<(String, String)> = Vec::new();
        for s in statements {
            assert_eq!(s["Effect"], "Allow", "{s}");
            assert!(s.get("NotAction").is_none() && s.get("NotResource").is_none());
            assert!(s.get("Condition").is_none(), "{s}");
            let list = |v: &Value| match v {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            for a in list(&s["Action"]) {
                for r in list(&s["Resource"]) {
                    granted.push((scalar(&a), scalar(&t.resolve(&r))));
                }
            }
        }
        granted.sort();
        let arn = |l: &str| t.physical()[l].arn.clone();
        let mut expected: Vec<(String, String)> = [
            ("dynamodb:BatchWriteItem", arn("LabelsTable")),
            ("dynamodb:GetItem", arn("LabelsTable")),
            ("dynamodb:PutItem", arn("LabelsTable")),
            ("dynamodb:Scan", arn("LabelsTable")),
            ("dynamodb:Query", format!("{}/index/*", arn("AlertsTable"))),
            ("dynamodb:GetItem", arn("ConfigTable")),
            ("dynamodb:Query", arn("ListsTable")),
        ]
        .into_iter()
        .map(|(a, r)| (a.to_owned(), r))
        .collect();
        expected.sort();
        // The alerts table only through its indexes: `query alerts` never reads the
        // table itself.
        assert_eq!(granted, expected);
        let out = t.raw().pointer("/Outputs/LabellerPolicyArn").unwrap();
        assert_eq!(out["Value"], json!({"Ref": "LabellerPolicy"}));
    }

    #[test]
    fn sub_with_variables_and_attributes() {
        let t = Template::parse("Parameters: {Stage: {Type: String, Default: x}}\nResources: {Q: {Type: AWS::SQS::Queue, Properties: {QueueName: {Fn::Sub: 'q-${Stage}'}}}}").unwrap();
        let v: Value = serde_json::json!({"Fn::Sub": ["${A}/${Q.Arn}/${AWS::Region}", {"A": {"Ref": "Stage"}}]});
        assert_eq!(
            t.resolve(&v),
            Value::String("x/arn:aws:sqs:us-east-1:000000000000:q-x/us-east-1".into())
        );
    }
}
