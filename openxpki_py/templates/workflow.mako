<%inherit file="base.mako"/>
<%block name="page_title">Workflow ${workflow.id}</%block>
<h1>${workflow.wf_type.replace('_', ' ').capitalize()}</h1>
<dl class="facts">
  <dt>Workflow</dt><dd id="workflow-id">${workflow.id}</dd>
  <dt>Type</dt><dd id="workflow-type">${workflow.wf_type}</dd>
  <dt>State</dt><dd id="workflow-state">${workflow.state}</dd>
  <dt>Progress</dt><dd id="workflow-proc-state">${workflow.proc_state}</dd>
</dl>
