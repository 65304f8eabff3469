"""Policy-as-code (Rego, evaluated in-process by regopy), quantum lint and cost."""
