"""Stage execution shared by the agent (which times it) and the workers (which serve it).

Layers: `stagekit` sits above the planner core (it reads `planner.catalog`) and below `agent/` and `scheduler/`,
which import it and never each other. Importing the package loads no torch: the interface (`stagekit.interface`,
`stagekit.errors`) and the model sources (`stagekit.sources`) are plain Python; the stage code
(`stagekit.serving`, `stagekit.recipes`, `stagekit.pipelines`, `stagekit.quant`, `stagekit.flops`) imports torch.
"""
