//! Job lifecycle: admission, placement, dispatch, progress, completion
