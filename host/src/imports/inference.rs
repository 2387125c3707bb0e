//! The `soma:encoder/inference` import: what a guest hands over is charged
//! for, checked and copied here, then run by [`crate::inference`].

use crate::Digest;
use crate::bindings::soma::encoder::inference::{Error as WitError, ErrorCode, Tensor, TensorType};
use crate::inference::{
    self, Inputs, MAX_ELEMENTS, MAX_INPUT_BYTES, MAX_NAME_BYTES, MAX_OPEN_SESSIONS, MAX_RANK,
    MAX_TENSORS, MIN_RUN_TIME, PLAN_FUEL_PER_NODE, PackageModel, RUN_BASE_FUEL, SESSION_OPEN_FUEL,
    elem_type,
};
use crate::limits::HOST_FUEL_PER_BYTE;
use crate::model::{Graph, ShapeError};
use crate::sandbox::{Sandbox, charge_fuel};
use std::collections::BTreeMap;
use std::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, Resource, ResourceType, WasmList, WasmStr};

/// A session handle held by a guest.
struct OpenSession {
    model: PackageModel,
}

/// A `named-tensor` as it lies in guest memory: lifted without copying its
/// name, dimensions or data, so the host can charge for them first.
#[derive(ComponentType, Lift)]
#[component(record)]
struct GuestTensor {
    name: WasmStr,
    tensor: GuestTensorData,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct GuestTensorData {
    dimensions: WasmList<u32>,
    ty: TensorType,
    data: WasmList<u8>,
}

/// Adds `soma:encoder/inference` to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    let mut inference = linker.instance("soma:encoder/inference@0.1.0")?;
    inference.resource(
        "session",
        ResourceType::host::<OpenSession>(),
        |mut store, rep| {
            let sandbox = store.data_mut();
            sandbox
                .table
                .delete(Resource::<OpenSession>::new_own(rep))?;
            sandbox.open_sessions -= 1;
            Ok(())
        },
    )?;
    inference.func_wrap("[static]session.open", |mut store, (model,): (WasmStr,)| {
        // wasmtime exposes a string's length only once it is validated in
        // place (no copy); the host charges for it before any other work.
        let text = model.to_str(&store)?;
        let cost = SESSION_OPEN_FUEL.saturating_add(text.len() as u64 * HOST_FUEL_PER_BYTE);
        let digest = Digest::from_hex(&text);
        charge_fuel(&mut store, cost)?;
        let sandbox = store.data_mut();
        let Some(model) = digest.and_then(|d| sandbox.models.get(&d)).cloned() else {
            let message = "no model with this digest in the encoder's package";
            return Ok((Err(error(ErrorCode::NotFound, message)),));
        };
        if sandbox.open_sessions >= MAX_OPEN_SESSIONS {
            let message = format!("more than {MAX_OPEN_SESSIONS} sessions open at once");
            return Ok((Err(error(ErrorCode::TooLarge, message)),));
        }
        let handle = sandbox.table.push(OpenSession { model })?;
        sandbox.open_sessions += 1;
        Ok((Ok(handle),))
    })?;
    inference.func_wrap(
        "[method]session.run",
        |mut store, (session, inputs): (Resource<OpenSession>, WasmList<GuestTensor>)| {
            let used = store.data().table.get(&session)?.model.clone();
            let model = &used.model;
            let planning = PLAN_FUEL_PER_NODE.saturating_mul(model.graph.nodes.len() as u64);
            charge_fuel(&mut store, RUN_BASE_FUEL.saturating_add(planning))?;
            let inputs = match read_inputs(&mut store, &inputs, &model.graph)? {
                Ok(inputs) => inputs,
                Err(e) => return Ok((Err(e),)),
            };
            let Some(planned) = model.plan(inputs.shapes()) else {
                let message = "shape inference failed on these inputs";
                return Ok((Err(error(ErrorCode::InvalidArgument, message)),));
            };
            let plan = match planned {
                Ok(plan) => plan,
                Err(e @ (ShapeError::TooLarge { .. } | ShapeError::Memory { .. })) => {
                    return Ok((Err(error(ErrorCode::TooLarge, e.to_string())),));
                }
                Err(e) => return Ok((Err(error(ErrorCode::InvalidArgument, e.to_string())),)),
            };
            charge_fuel(&mut store, plan.fuel)?;
            // The run may take what is left of the call's wall-clock budget.
            let left = store
                .data()
                .deadline
                .saturating_duration_since(Instant::now());
            Ok((inference::run(
                &used,
                inputs,
                &plan,
                left.max(MIN_RUN_TIME),
            )?,))
        },
    )
}

fn error(code: ErrorCode, message: impl Into<String>) -> WitError {
    WitError {
        code,
        message: message.into(),
    }
}

/// Charges for the inputs by their size, then checks them against the
/// limits and the graph's inputs and copies them out. The outer error is
/// the guest's fault (memory it handed over is malformed), the inner one
/// an answer to give it.
fn read_inputs(
    store: &mut StoreContextMut<'_, Sandbox>,
    list: &WasmList<GuestTensor>,
    graph: &Graph,
) -> wasmtime::Result<Result<Inputs, WitError>> {
    let too_large = |message: String| Ok(Err(error(ErrorCode::TooLarge, message)));
    let invalid = |message: String| Ok(Err(error(ErrorCode::InvalidArgument, message)));
    if list.len() > MAX_TENSORS {
        return too_large(format!(
            "{} input tensors; at most {MAX_TENSORS}",
            list.len()
        ));
    }
    let guest: Vec<GuestTensor> = list.iter(&mut *store)?.collect::<wasmtime::Result<_>>()?;
    let mut handed = 0u64;
    for t in &guest {
        // Names are validated in place (no copy) to learn their length.
        let name = t.name.to_str(&*store)?.len();
        handed += (name + 4 * t.tensor.dimensions.len() + t.tensor.data.len()) as u64;
    }
    charge_fuel(store, handed.saturating_mul(HOST_FUEL_PER_BYTE))?;
    let mut by_name = BTreeMap::new();
    let mut total_bytes = 0u64;
    for t in guest {
        let name = t.name.to_str(&*store)?;
        if name.len() > MAX_NAME_BYTES {
            return invalid(format!(
                "a tensor name is longer than {MAX_NAME_BYTES} bytes"
            ));
        }
        let name = name.into_owned();
        let dimensions = t.tensor.dimensions.as_le_slice(&*store).to_vec();
        if dimensions.len() > MAX_RANK {
            return too_large(format!(
                "`{name}` has rank {}; at most {MAX_RANK}",
                dimensions.len()
            ));
        }
        let elements = dimensions
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)))
            .filter(|&n| n <= MAX_ELEMENTS);
        let Some(elements) = elements else {
            return too_large(format!("`{name}` has more than {MAX_ELEMENTS} elements"));
        };
        let expected = elements * element_size(t.tensor.ty);
        if t.tensor.data.len() as u64 != expected {
            return invalid(format!(
                "`{name}`: dimensions {dimensions:?} of {:?} need {expected} bytes, got {}",
                t.tensor.ty,
                t.tensor.data.len()
            ));
        }
        total_bytes += expected;
        if total_bytes > MAX_INPUT_BYTES {
            return too_large(format!("more than {MAX_INPUT_BYTES} bytes of input"));
        }
        let tensor = Tensor {
            dimensions,
            ty: t.tensor.ty,
            data: t.tensor.data.as_le_slice(&*store).to_vec(),
        };
        if by_name.insert(name.clone(), tensor).is_some() {
            return invalid(format!("input `{name}` is given twice"));
        }
    }
    let mut ordered = Vec::with_capacity(graph.inputs.len());
    for input in &graph.inputs {
        match by_name.remove(&input.name) {
            Some(t) => ordered.push((input.name.clone(), t)),
            None => return invalid(format!("the model needs input `{}`", input.name)),
        }
    }
    if let Some(extra) = by_name.keys().next() {
        return invalid(format!("the model has no input `{extra}`"));
    }
    Ok(Ok(Inputs(ordered)))
}

fn element_size(ty: TensorType) -> u64 {
    elem_type(ty).size()
}
