"""Operations: what keeps a tritonserver's promises around its models -- drain before a stop, replace
a dead model process, tell the truth on the ready endpoint -- and the state its processes share."""
