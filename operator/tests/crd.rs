//! Checks of the generated `TransactionPipeline` CRD: structural schema, printer columns and
//! subresources, the example manifests (good ones pass serde + CEL, bad ones are rejected with
//! the message listed in `manifests/examples/bad/expected.json`) and that
//! `crds/transactionpipelines.txpipe.io.yaml` is up to date.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde_json::Value;
use txpipe_operator::crd::TransactionPipeline;
use txpipe_operator::render::{RenderContext, render, render_manifests_yaml};

/// The repository root (the operator crate's parent).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator crate lives in the workspace")
        .to_path_buf()
}

fn crd_json() -> Value {
    serde_json::to_value(TransactionPipeline::crd()).expect("CRD serializes")
}

fn open_api_schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

// ---------------------------------------------------------------------------------------------
// (a) structural schema
// ---------------------------------------------------------------------------------------------

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];
const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

/// Kubernetes' structural-schema rules (apiextensions `validation.go` /
/// "Specifying a structural schema" in the CRD docs), applied to one node and its children.
/// `in_junctor`: the node is (inside) an allOf/anyOf/oneOf/not branch.
fn check_structural(node: &Value, path: &str, in_junctor: bool, errors: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        errors.push(format!("{path}: schema node is not an object"));
        return;
    };
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));

    if obj.contains_key("$ref") {
        errors.push(format!("{path}: $ref is not allowed"));
    }
    if let Some(t) = obj.get("type") {
        match t.as_str() {
            Some(t) if TYPES.contains(&t) => {}
            _ => errors.push(format!("{path}: invalid type {t}")),
        }
    }
    if in_junctor {
        // Rule 3: no description/type/default/additionalProperties/nullable inside junctors.
        for k in [
            "description",
            "type",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if obj.contains_key(k) {
                errors.push(format!("{path}: `{k}` inside allOf/anyOf/oneOf/not"));
            }
        }
    } else if !int_or_string && !preserve && obj.get("type").is_none() {
        // Rule 1: every specified node has a non-empty type.
        errors.push(format!("{path}: missing type"));
    }
    if int_or_string {
        if let Some(t) = obj.get("type") {
            errors.push(format!(
                "{path}: int-or-string node must not set type ({t})"
            ));
        }
        // Only the two allowed anyOf patterns (integer|string), if any.
        if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
            let types: Vec<_> = any.iter().filter_map(|b| b.get("type")).collect();
            if any.len() != 2 || types.len() != 2 {
                errors.push(format!(
                    "{path}: int-or-string anyOf must be [integer, string]"
                ));
            }
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        errors.push(format!(
            "{path}: additionalProperties: false is not allowed"
        ));
    }
    if !in_junctor
        && obj.get("type").and_then(Value::as_str) == Some("object")
        && !obj.contains_key("properties")
        && !obj.contains_key("additionalProperties")
        && !preserve
    {
        errors.push(format!(
            "{path}: object without properties needs additionalProperties or \
             x-kubernetes-preserve-unknown-fields"
        ));
    }
    if !in_junctor
        && obj.get("type").and_then(Value::as_str) == Some("array")
        && !obj.get("items").is_some_and(Value::is_object)
    {
        errors.push(format!("{path}: array needs a single `items` schema"));
    }
    if let Some(req) = obj.get("required").and_then(Value::as_array) {
        let props = obj.get("properties").and_then(Value::as_object);
        for r in req {
            let known = r
                .as_str()
                .is_some_and(|r| props.is_some_and(|p| p.contains_key(r)));
            if !known {
                errors.push(format!("{path}: required {r} is not a declared property"));
            }
        }
    }

    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), in_junctor, errors);
        }
    }
    if let Some(ap) = obj.get("additionalProperties")
        && ap.is_object()
    {
        check_structural(ap, &format!("{path}[*]"), in_junctor, errors);
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), in_junctor, errors);
    }
    for j in JUNCTORS {
        let branches: Vec<&Value> = match obj.get(j) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => continue,
        };
        for (i, b) in branches.into_iter().enumerate() {
            // Rule 2: fields inside a junctor must also be specified outside it.
            if let Some(bp) = b.get("properties").and_then(Value::as_object) {
                for k in bp.keys() {
                    if obj.get("properties").and_then(|p| p.get(k)).is_none() {
                        errors.push(format!(
                            "{path}.{j}[{i}]: property {k} is not specified outside the junctor"
                        ));
                    }
                }
            }
            check_structural(b, &format!("{path}.{j}[{i}]"), true, errors);
        }
    }
}

#[test]
fn crd_schema_is_structural() {
    let schema = open_api_schema();
    assert_eq!(schema["type"], "object", "root must be an object");
    let mut errors = Vec::new();
    check_structural(&schema, "openAPIV3Schema", false, &mut errors);
    // Rule 4: metadata may only restrict name/generateName; we do not touch it at all.
    assert!(
        schema["properties"].get("metadata").is_none(),
        "the schema must not specify metadata"
    );
    assert!(errors.is_empty(), "not structural:\n{}", errors.join("\n"));
}

#[test]
fn quantities_are_int_or_string() {
    let schema = open_api_schema();
    for part in ["broker", "workers"] {
        let res = &schema["properties"]["spec"]["properties"][part]["properties"]["resources"];
        for kind in ["limits", "requests"] {
            let q = &res["properties"][kind]["additionalProperties"];
            assert_eq!(
                q["x-kubernetes-int-or-string"],
                Value::Bool(true),
                "{part}.resources.{kind} values must be int-or-string: {q}"
            );
        }
    }
}

/// The structural checker itself catches the mistakes it is meant to catch.
#[test]
fn structural_checker_rejects_bad_schemas() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "map": {"type": "object"},
            "list": {"type": "array"},
            "ref": {"$ref": "#/definitions/X"},
            "junk": {"type": "object", "properties": {"a": {"type": "string"}},
                     "anyOf": [{"type": "object", "properties": {"b": {"type": "string"}}}]}
        }
    });
    let mut errors = Vec::new();
    check_structural(&bad, "root", false, &mut errors);
    let all = errors.join("\n");
    for needle in [
        "root.untyped: missing type",
        "root.map: object without properties",
        "root.list: array needs",
        "root.ref: $ref",
        "property b is not specified outside",
        "`type` inside allOf/anyOf/oneOf/not",
    ] {
        assert!(all.contains(needle), "expected {needle:?} in:\n{all}");
    }
}

// ---------------------------------------------------------------------------------------------
// (b) names, printer columns, subresources
// ---------------------------------------------------------------------------------------------

#[test]
fn crd_metadata_columns_and_subresources() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "transactionpipelines.txpipe.io");
    assert_eq!(crd["spec"]["group"], "txpipe.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "TransactionPipeline");
    assert_eq!(crd["spec"]["names"]["plural"], "transactionpipelines");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["txp"])
    );

    let versions = crd["spec"]["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 1);
    let v = &versions[0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["served"], true);
    assert_eq!(v["storage"], true);

    let columns: BTreeMap<String, (String, String)> = v["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                (
                    c["type"].as_str().unwrap_or_default().to_string(),
                    c["jsonPath"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    let expect = [
        (
            "Ready",
            "string",
            ".status.conditions[?(@.type==\"Ready\")].status",
        ),
        ("Brokers", "string", ".status.broker.summary"),
        ("Workers", "string", ".status.workers.summary"),
        ("Certs-Expire", "string", ".status.tls.notAfter"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ];
    for (name, ty, path) in expect {
        let got = columns
            .get(name)
            .unwrap_or_else(|| panic!("missing printer column {name}: {columns:?}"));
        assert_eq!(got, &(ty.to_string(), path.to_string()), "column {name}");
    }

    let sub = &v["subresources"];
    assert_eq!(sub["status"], serde_json::json!({}), "status subresource");
    assert_eq!(sub["scale"]["specReplicasPath"], ".spec.workers.replicas");
    assert_eq!(
        sub["scale"]["statusReplicasPath"],
        ".status.workers.replicas"
    );
    assert_eq!(
        sub["scale"]["labelSelectorPath"],
        ".status.workers.selector"
    );

    // The scale paths exist in the schema with the right types.
    let schema = open_api_schema();
    let p = &schema["properties"];
    assert_eq!(
        p["spec"]["properties"]["workers"]["properties"]["replicas"]["type"],
        "integer"
    );
    assert_eq!(
        p["status"]["properties"]["workers"]["properties"]["replicas"]["type"],
        "integer"
    );
    assert_eq!(
        p["status"]["properties"]["workers"]["properties"]["selector"]["type"],
        "string"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) example manifests
// ---------------------------------------------------------------------------------------------

fn examples_dir() -> PathBuf {
    repo_root().join("manifests/examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Fields of `input` that the typed round trip drops, i.e. fields the schema does not declare:
/// the API server rejects them under strict field validation (kubectl's default,
/// `strict decoding error: unknown field "spec.x"`) and prunes them otherwise.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    if let (Value::Object(i), Value::Object(t)) = (input, typed) {
        for (k, v) in i {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match t.get(k) {
                Some(tv) => unknown_fields(v, tv, &p, out),
                None if v.is_null() => {}
                None => out.push(format!("unknown field \"{p}\"")),
            }
        }
    }
}

/// Everything the API server would check, client-side: serde (types, required fields),
/// strict field validation (unknown fields) and the CEL rules. Returns the error messages.
fn admit(text: &str) -> Result<TransactionPipeline, Vec<String>> {
    let p: TransactionPipeline = serde_yaml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let input: Value = serde_yaml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let typed = serde_json::to_value(&p).map_err(|e| vec![e.to_string()])?;
    let mut unknown = Vec::new();
    unknown_fields(&input, &typed, "", &mut unknown);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    p.validate_cel()
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(p)
}

#[test]
fn good_examples_pass_schema_and_cel_and_render() {
    let files = yaml_files(&examples_dir());
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_string))
        .collect();
    for required in ["small.yaml", "production.yaml"] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read example");
        let p = admit(&text).unwrap_or_else(|e| panic!("{} rejected: {e:#?}", f.display()));
        render(&p, &RenderContext::default())
            .unwrap_or_else(|e| panic!("{} does not render: {e}", f.display()));
        let ctx = RenderContext {
            service_monitor_available: true,
            ..Default::default()
        };
        let out = render_manifests_yaml(&text, &ctx)
            .unwrap_or_else(|e| panic!("{} does not render: {e}", f.display()));
        assert!(out.contains("kind: StatefulSet"), "{}", f.display());
    }
}

#[test]
fn production_example_uses_the_advertised_features() {
    let text = std::fs::read_to_string(examples_dir().join("production.yaml")).expect("read");
    let p = admit(&text).expect("production.yaml is valid");
    assert_eq!(p.spec.broker.replicas, 3);
    assert!(p.spec.broker.storage.storage_class_name.is_some());
    let a = p.spec.workers.autoscaling.as_ref().expect("autoscaling");
    assert_eq!((a.min_replicas, a.max_replicas), (2, 20));
    assert!(a.target_pending_per_worker.is_some());
    assert!(p.spec.monitoring.service_monitor);
    assert!(p.spec.pan_key_secret.is_some());
    assert!(p.spec.producer.is_none());

    let small = std::fs::read_to_string(examples_dir().join("small.yaml")).expect("read");
    let s = admit(&small).expect("small.yaml is valid");
    assert_eq!(s.spec.broker.replicas, 1);
    assert_eq!(s.spec.workers.replicas, 1);
    assert!(s.spec.workers.autoscaling.is_none());
}

#[test]
fn bad_examples_are_rejected_with_the_expected_message() {
    let dir = examples_dir().join("bad");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("read expected.json"),
    )
    .expect("expected.json is JSON");
    let expected = expected.as_object().expect("expected.json is an object");
    let files = yaml_files(&dir);
    assert!(files.len() >= 9, "too few bad examples: {files:?}");

    let mut listed: Vec<&String> = expected.keys().filter(|k| !k.starts_with('_')).collect();
    listed.sort();
    let mut present: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_string))
        .collect();
    present.sort();
    assert_eq!(
        listed.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        present.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "expected.json and bad/*.yaml must list the same files"
    );

    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).expect("file name");
        let entry = &expected[name];
        let message = entry["message"].as_str().expect("message");
        let layer = entry["layer"].as_str().expect("layer");
        let text = std::fs::read_to_string(&f).expect("read bad example");
        let errors = match admit(&text) {
            Ok(_) => panic!("{name} was accepted, expected {message:?}"),
            Err(e) => e,
        };
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{name}: expected {message:?} in {errors:#?}"
        );
        // The layer is right: a "cel" file passes serde and the field check, a "schema" one
        // does not get as far as CEL.
        let typed = serde_yaml::from_str::<TransactionPipeline>(&text);
        match layer {
            "cel" => {
                let p = typed.unwrap_or_else(|e| panic!("{name}: cel-layer file fails serde: {e}"));
                assert!(p.validate_cel().is_err(), "{name}: CEL must reject it");
            }
            "schema" => {
                let cel_said = typed.ok().and_then(|p| p.validate_cel().err());
                assert!(
                    cel_said.is_none(),
                    "{name}: schema-layer file also fails CEL ({cel_said:?}); mark it cel"
                );
            }
            other => panic!("{name}: unknown layer {other}"),
        }
    }
}

fn collect_rules(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let Some(obj) = node.as_object() else { return };
    for rule in obj
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = rule.get("rule").and_then(Value::as_str) {
            out.push((path.to_string(), r.to_string()));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            collect_rules(v, &format!("{path}.{k}"), out);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = obj.get(k) {
            collect_rules(v, &format!("{path}[]"), out);
        }
    }
}

/// Every `x-kubernetes-validations` rule parses as CEL. (String literals accept only CEL's
/// escapes: `'\.'` in a regex is a syntax error for the API server's cel-go as well; write
/// `[.]` or a raw string `r'...'` instead.)
#[test]
fn every_cel_rule_compiles() {
    let mut rules = Vec::new();
    collect_rules(&open_api_schema(), "", &mut rules);
    assert!(
        rules.len() >= 15,
        "expected the CRD's CEL rules, found {rules:?}"
    );
    let broken: Vec<String> = rules
        .iter()
        .filter_map(|(path, rule)| {
            kube::core::cel::cel::Program::compile(rule).err().map(|e| {
                let text = e.to_string();
                let first = text
                    .lines()
                    .find(|l| l.contains("Syntax error"))
                    .or_else(|| text.lines().next())
                    .unwrap_or_default()
                    .to_string();
                format!("{path}: {rule}\n    {first}")
            })
        })
        .collect();
    assert!(
        broken.is_empty(),
        "CEL rules that do not compile (fix them in operator/src/crd.rs, then `make crds`):\n{}",
        broken.join("\n")
    );
}

/// Every CEL rule of the CRD compiles and runs client-side: a default pipeline passes, and
/// each rule fires on a minimal violation.
#[test]
fn cel_rules_evaluate_client_side() {
    let base = "apiVersion: txpipe.io/v1alpha1\nkind: TransactionPipeline\nmetadata:\n  name: x\nspec: {}\n";
    admit(base).expect("an empty spec is valid (all defaults)");
    let cases = [
        (
            "broker: {replicas: 9}",
            "broker.replicas must be between 1 and 7",
        ),
        (
            "broker: {heartbeatMs: 5, electionTimeoutMs: 300}",
            "heartbeatMs must be at least 10",
        ),
        ("broker: {decisionsMaxBytes: 1000}", "at least 1 MiB"),
        (
            "broker: {maxDeliveries: 0}",
            "maxDeliveries must be at least 1",
        ),
        (
            "broker: {ackDeadlineMs: 10}",
            "ackDeadlineMs must be at least 100",
        ),
        ("broker: {storage: {size: 0Gi}}", "positive quantity"),
        (
            "broker: {pvcRetention: {whenScaled: Keep}}",
            "must be Retain or Delete",
        ),
        (
            "workers: {replicas: -1}",
            "workers.replicas must be between 0 and 1000",
        ),
        (
            "workers: {autoscaling: {minReplicas: 0}}",
            "minReplicas must be at least 1",
        ),
        (
            "workers: {autoscaling: {maxReplicas: 2000}}",
            "maxReplicas must be between 1 and 1000",
        ),
        (
            "workers: {autoscaling: {targetCPUUtilizationPercentage: 0}}",
            "targetCPUUtilizationPercentage must be between 1 and 100",
        ),
        (
            "workers: {autoscaling: {targetPendingPerWorker: 0}}",
            "targetPendingPerWorker must be at least 1",
        ),
        (
            "workers: {scoring: {reviewThreshold: 1.5}}",
            "reviewThreshold must be between 0 and 1",
        ),
        (
            "workers: {scoring: {declineThreshold: -0.1}}",
            "declineThreshold must be between 0 and 1",
        ),
        (
            "workers: {scoring: {issuerLatencyUs: -1}}",
            "issuerLatencyUs must not be negative",
        ),
        ("producer: {count: 0}", "producer.count must be at least 1"),
        (
            "producer: {count: 1, rate: -1}",
            "producer.rate must not be negative",
        ),
        ("panKeySecret: {name: ''}", "secret name must not be empty"),
    ];
    let mut failures = Vec::new();
    for (spec, message) in cases {
        let text = base.replace("spec: {}", &format!("spec: {{{spec}}}"));
        match admit(&text) {
            Ok(_) => failures.push(format!("{spec}: accepted, expected {message:?}")),
            Err(errs) if errs.iter().any(|e| e.contains(message)) => {}
            Err(errs) => failures.push(format!("{spec}: expected {message:?}, got {errs:?}")),
        }
    }
    // Valid edge values pass.
    for spec in [
        "broker: {replicas: 7, storage: {size: 1.5Gi}}",
        "broker: {storage: {size: 500M}}",
        "workers: {replicas: 0, scoring: {reviewThreshold: 0.5, declineThreshold: 0.5}}",
        "workers: {scoring: {reviewThreshold: 0.2}}",
    ] {
        let text = base.replace("spec: {}", &format!("spec: {{{spec}}}"));
        if let Err(e) = admit(&text) {
            failures.push(format!("{spec}: rejected: {e:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// (d) crds/ is up to date
// ---------------------------------------------------------------------------------------------

#[test]
fn crd_file_is_up_to_date() {
    let path = repo_root().join("crds/transactionpipelines.txpipe.io.yaml");
    let generated = serde_yaml::to_string(&TransactionPipeline::crd()).expect("CRD serializes");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}); run `make crds` and commit the result",
            path.display()
        )
    });
    if on_disk != generated {
        let line = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "(length differs)".to_string(),
                |i| format!("first difference at line {}", i + 1),
            );
        panic!(
            "{} differs from TransactionPipeline::crd() {line}; run `make crds` and commit the \
             result",
            path.display()
        );
    }
}
